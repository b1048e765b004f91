"""rlvr.report.intervals: rliable's estimates on inputs whose answers are known by hand."""

import math

import numpy as np
import pytest

from rlvr.report import intervals as iv


def test_identical_seeds_give_a_zero_width_interval():
    est = iv.estimate([0.5] * 5)
    assert (est.point, est.low, est.high, est.n) == (0.5, 0.5, 0.5, 5)
    assert iv.estimate([0.5] * 5, "iqm").low == iv.estimate([0.5] * 5, "iqm").high == 0.5


def test_two_seeds_bootstrap_to_their_own_range():
    # resampling 2 values draws means x1, (x1 + x2)/2, x2 with probability 1/4, 1/2, 1/4
    est = iv.estimate([0.2, 0.4])
    assert (est.point, est.low, est.high) == pytest.approx((0.3, 0.2, 0.4))
    assert est.text() == "0.300 [0.20, 0.40] n=2"


def test_one_run_has_no_interval():
    est = iv.estimate([0.7])
    assert est.point == 0.7 and math.isnan(est.low) and not est.has_interval and est.text() == "0.700 n=1"


def test_iqm_trims_a_quarter_each_side():
    assert iv.estimate([1, 2, 3, 4, 5, 6, 7, 100], "iqm").point == pytest.approx(4.5)
    assert iv.estimate([1, 2, 3, 4, 5, 6, 7, 100]).point == pytest.approx(16.0)


def test_probability_of_improvement_by_hand():
    x = np.arange(6) / 10
    shifted = iv.improvement(x + 1, x)
    assert (shifted.point, shifted.low, shifted.high) == (1.0, 1.0, 1.0)
    assert iv.improvement(x, x).point == 0.5
    # x = (3, 4) against y = (1, 2, 3.5): 3 beats 2 of 3, 4 beats 3 of 3 → 5/6; ties count half
    assert iv.improvement([3, 4], [1, 2, 3.5]).point == pytest.approx(5 / 6)
    assert iv.improvement([1, 2, 3], [2, 2, 2]).point == pytest.approx(0.5)


def test_wilson_interval_by_hand():
    z = 1.959963984540054
    # 0 of 6: [0, z²/(n + z²)]
    zero = iv.wilson(0, 6)
    assert (zero.point, zero.low, zero.high) == pytest.approx((0.0, 0.0, z * z / (6 + z * z)))
    one = iv.wilson(1, 4)
    assert (one.low, one.high) == pytest.approx((0.04559, 0.69936), abs=1e-5)
    assert iv.wilson(6, 6).high == 1.0 and iv.wilson(0, 0) is iv.NO_ESTIMATE


def test_bases_as_a_factor_widen_the_interval():
    # two bases (columns) that disagree by 0.2, three tight seeds each
    scores = np.array([[0.40, 0.60], [0.41, 0.61], [0.39, 0.59]])
    fixed = iv.estimate(scores, task_bootstrap=False)
    resampled = iv.estimate(scores)  # several tasks: the bases are resampled too
    assert fixed.point == resampled.point == pytest.approx(0.5)
    assert fixed.high - fixed.low < 0.03
    assert (resampled.low, resampled.high) == pytest.approx((0.40, 0.60), abs=0.011)


def test_supported_best_needs_runs_and_a_lead_beyond_the_noise():
    a, b = np.array([0.50, 0.52, 0.51]), np.array([0.30, 0.32, 0.31])
    assert iv.supported_best({"a": a, "b": b}) == "a"
    assert iv.supported_best({"a": a[:2], "b": b[:2]}) is None  # 2 vs 2: separated by chance 1 in 6
    assert iv.supported_best({"a": a, "b": a.copy()}) is None  # a tie
    overlapping = np.array([0.30, 0.55, 0.42])
    assert iv.supported_best({"a": overlapping, "b": np.array([0.31, 0.50, 0.40])}) is None


def test_performance_profile_counts_runs_above_each_threshold():
    profiles, bands = iv.performance_profile({"a": np.array([[0.1, 0.3], [0.5, 0.7]])}, np.array([0.0, 0.2, 0.6, 0.8]), reps=200)
    assert profiles["a"] == pytest.approx([1.0, 0.75, 0.25, 0.0])
    assert bands["a"].shape == (2, 4)


def test_mismatched_tasks_are_refused():
    with pytest.raises(ValueError, match="same tasks"):
        iv.improvement(np.ones((3, 2)), np.ones((3, 1)))


def test_an_interval_does_not_depend_on_what_ran_before_it():
    # rliable draws its resamples from numpy's global RNG: the same runs must give the same table
    scores = np.array([[0.40, 0.61], [0.45, 0.58], [0.39, 0.66]])
    draws = []
    for seed in (1, 2):
        np.random.seed(seed)
        draws.append((iv.estimate(scores), iv.estimate(scores[:, 0]), iv.improvement(scores, scores - 0.01)))
        assert np.random.get_state()[1][0] == np.random.RandomState(seed).get_state()[1][0]  # restored
    assert draws[0] == draws[1]
