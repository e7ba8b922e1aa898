"""Proportions with confidence intervals: every rate a benchmark reports (UA, accuracies) is k of n."""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import NormalDist


def wilson_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval of a proportion k / n.

    Wilson (1927), "Probable inference, the law of succession, and statistical
    inference", JASA 22: with z the normal quantile and p = k / n,
    centre = (p + z^2 / 2n) / (1 + z^2 / n) and
    half-width = z / (1 + z^2 / n) * sqrt(p (1 - p) / n + z^2 / 4n^2).
    Unlike the normal approximation it stays inside [0, 1] and is not empty
    at k = 0 or k = n, where erasure rates often sit.
    """
    if n <= 0:
        raise ValueError(f"a proportion needs at least one trial, got n = {n}")
    if not 0 <= k <= n:
        raise ValueError(f"k must lie between 0 and n = {n}, got {k}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence}")
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = k / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z / denominator * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    # At k = 0 (k = n) the lower (upper) bound is exactly 0 (1); say so rather than leave rounding error.
    low = 0.0 if k == 0 else max(0.0, centre - half)
    high = 1.0 if k == n else min(1.0, centre + half)
    return low, high


def proportion(k: int, n: int, confidence: float = 0.95, digits: int = 4) -> dict:
    """``{k, n, value, ci_low, ci_high}`` of k successes in n trials, with the Wilson interval."""
    low, high = wilson_interval(k, n, confidence)
    return {
        "k": int(k),
        "n": int(n),
        "value": round(k / n, digits),
        "ci_low": round(low, digits),
        "ci_high": round(high, digits),
    }


def median_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """A distribution-free interval for the median of ``values``: two of their order statistics.

    With the values sorted, ``[x_(j), x_(n+1-j)]`` holds the population median
    with probability ``1 - 2 P(B <= j - 1)``, ``B ~ Binomial(n, 1/2)`` (the
    sign-test interval; Conover 1999, "Practical Nonparametric Statistics",
    3rd ed., section 3.2). The largest ``j`` whose coverage reaches
    ``confidence`` is used; where even ``j = 1`` falls short (fewer than 6
    values at 95 %), the interval is the whole range, and holds less.
    """
    if not values:
        raise ValueError("a median needs at least one value")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence}")
    ordered, n = sorted(values), len(values)
    below, j = 0.0, 1  # below: P(B <= j - 1)
    while j < (n + 1) // 2:
        below_next = below + math.comb(n, j) / 2**n
        if 1 - 2 * below_next < confidence:
            break
        below, j = below_next, j + 1
    return ordered[j - 1], ordered[n - j]


def paired_bootstrap(
    a: Sequence[float], b: Sequence[float], reps: int = 2000, confidence: float = 0.95, seed: int = 0
) -> dict:
    """The mean difference ``mean(a) - mean(b)`` of paired outcomes with a percentile bootstrap interval.

    ``a[i]`` and ``b[i]`` are two methods' results on the same unit (the same
    prompt and seed): resampling the units keeps the pairs, so what both
    methods share cancels out (Efron and Tibshirani 1993, "An Introduction
    to the Bootstrap", ch. 13, the percentile interval). A difference is
    called significant only where the interval excludes zero.
    """
    if len(a) != len(b) or not len(a):
        raise ValueError(f"paired outcomes need two equally long non-empty lists, got {len(a)} and {len(b)}")
    import random

    diffs = [float(x) - float(y) for x, y in zip(a, b, strict=True)]
    n = len(diffs)
    rng = random.Random(seed)
    means = sorted(sum(diffs[rng.randrange(n)] for _ in range(n)) / n for _ in range(reps))
    tail = (1 - confidence) / 2
    low, high = means[int(tail * (reps - 1))], means[int((1 - tail) * (reps - 1))]
    return {
        "difference": round(sum(diffs) / n, 4),
        "ci_low": round(low, 4),
        "ci_high": round(high, 4),
        "n": n,
        "significant": low > 0 or high < 0,
    }
