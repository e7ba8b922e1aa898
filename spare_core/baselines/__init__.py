"""Published erasure methods, re-implemented on SPARE's backend so that comparisons compare objectives."""
