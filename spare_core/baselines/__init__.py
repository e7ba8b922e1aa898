"""Published erasure methods, re-implemented on SPARE's backend and trainer so that comparisons compare objectives.

``methods`` declares ESD-x, ESD-u (with their anchor-concept and noised-x_t
variants), LECO and UCE and runs them (:func:`run_baseline`); ``esd`` and
``uce`` hold each objective's formula.
"""
