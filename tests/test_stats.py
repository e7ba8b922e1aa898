"""Rates with Wilson intervals, checked against values computed by hand."""

import math

import pytest

from spare_core import proportion, wilson_interval
from spare_core.stats import median_interval

Z95 = 1.959963984540054


def _by_hand(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    p = k / n
    centre = (p + z**2 / (2 * n)) / (1 + z**2 / n)
    half = z / (1 + z**2 / n) * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2))
    return centre - half, centre + half


@pytest.mark.parametrize(("k", "n"), [(0, 10), (10, 10), (3, 10), (47, 48), (290, 300)])
def test_wilson_interval_matches_the_formula(k, n):
    low, high = wilson_interval(k, n)
    expected_low, expected_high = _by_hand(k, n)
    assert low == pytest.approx(max(0.0, expected_low), abs=1e-12)
    assert high == pytest.approx(min(1.0, expected_high), abs=1e-12)
    assert low <= k / n <= high


def test_wilson_interval_at_zero_successes_is_z2_over_n_plus_z2():
    # At k = 0 the interval is [0, z^2 / (n + z^2)]: 3.8415 / 13.8415 = 0.2775 for n = 10.
    low, high = wilson_interval(0, 10)
    assert low == 0.0
    assert high == pytest.approx(Z95**2 / (10 + Z95**2), rel=1e-9)
    assert high == pytest.approx(0.2775, abs=1e-4)


def test_more_trials_narrow_the_interval_and_higher_confidence_widens_it():
    width = lambda lo_hi: lo_hi[1] - lo_hi[0]  # noqa: E731
    assert width(wilson_interval(290, 300)) < width(wilson_interval(29, 30))
    assert width(wilson_interval(29, 30, confidence=0.99)) > width(wilson_interval(29, 30))
    # 300 generations at a rate near 0.97 give about +-2 points, as the benchmarks promise.
    assert width(wilson_interval(291, 300)) / 2 < 0.022


def test_proportion_reports_k_n_value_and_interval():
    row = proportion(47, 48)
    assert row["k"] == 47 and row["n"] == 48
    assert row["value"] == round(47 / 48, 4)
    assert row["ci_low"] < row["value"] < row["ci_high"] <= 1.0


@pytest.mark.parametrize(("k", "n", "confidence"), [(1, 0, 0.95), (5, 4, 0.95), (-1, 4, 0.95), (1, 4, 1.0)])
def test_bad_counts_are_refused(k, n, confidence):
    with pytest.raises(ValueError):
        wilson_interval(k, n, confidence)


def test_the_paired_bootstrap_keeps_pairs_so_shared_variation_cancels():
    from spare_core import paired_bootstrap

    shared = [i % 2 for i in range(200)]  # half the units are hard for both methods
    better = list(shared)
    for i in range(0, 200, 2):
        better[i] = 1  # ... and the second method also gets every even unit right
    result = paired_bootstrap(better, shared)
    assert result["difference"] == 0.5 and result["n"] == 200
    # Every resample of the pairs differs by the share of even units drawn: the interval is narrow around 0.5.
    assert 0.4 < result["ci_low"] < 0.5 < result["ci_high"] < 0.6 and result["significant"]
    same = paired_bootstrap(shared, shared)
    assert (same["difference"], same["ci_low"], same["ci_high"], same["significant"]) == (0.0, 0.0, 0.0, False)
    one_flip = list(shared)
    one_flip[0] = 1
    assert paired_bootstrap(one_flip, shared)["significant"] is False  # 1 unit in 200 is noise
    with pytest.raises(ValueError, match="equally long"):
        paired_bootstrap([1, 0], [1])


def _sign_test_coverage(n: int, j: int) -> float:
    """P(x_(j) <= median <= x_(n+1-j)) for n values: 1 - 2 P(Binomial(n, 1/2) <= j - 1)."""
    return 1 - 2 * sum(math.comb(n, i) for i in range(j)) / 2**n


@pytest.mark.parametrize("n", [6, 7, 11, 20, 33])
def test_the_median_interval_takes_the_narrowest_pair_of_order_statistics_that_covers_95_percent(n):
    values = [10.0 * i for i in range(n, 0, -1)]  # unsorted on purpose: the function sorts
    low, high = median_interval(values)
    j = round(low / 10.0)  # the j-th smallest value is 10 j
    assert high == 10.0 * (n + 1 - j)
    assert _sign_test_coverage(n, j) >= 0.95
    assert _sign_test_coverage(n, j + 1) < 0.95  # one step narrower would cover less than asked


def test_the_median_interval_of_few_values_is_their_range_and_bad_input_is_refused():
    assert median_interval([3.0, 1.0, 2.0]) == (1.0, 3.0)
    assert median_interval([4.0]) == (4.0, 4.0)
    with pytest.raises(ValueError, match="at least one"):
        median_interval([])
    with pytest.raises(ValueError, match="confidence"):
        median_interval([1.0, 2.0], confidence=1.0)
