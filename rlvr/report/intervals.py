"""Interval estimates for the tables in results/, with rliable (Agarwal et al. 2021, "Deep RL at
the Edge of the Statistical Precipice").

Scores are matrices of runs × tasks (rliable's layout): a leaderboard cell is seeds × 1; a family
trained from several bases is seeds × bases, the bases then resampled too (rliable's
task_bootstrap), so base-to-base variance widens the interval instead of hiding in it; the
aggregate row over suites × models is seeds × tasks. Every interval is a 95% percentile interval
of the stratified bootstrap with a fixed seed (see _seeded_rliable), so the same runs give the
same tables.

    estimate(scores)                    mean or IQM with its interval
    improvement(x, y)                   P(X > Y) (Mann-Whitney, averaged over tasks) with its interval
    wilson(k, n)                        a rate's interval (a bootstrap of 0/6 would be [0, 0])
    performance_profile(scores, taus)   fraction of runs scoring above each τ, with bands
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

REPS = 2000  # bootstrap replications; rliable's default 50 000 buys a third digit we do not print
CONFIDENCE = 0.95
SEED = 0


@dataclass(frozen=True)
class Estimate:
    """A point estimate, its 95% interval (nan where it cannot be had: n < 2) and n."""

    point: float
    low: float
    high: float
    n: int

    @property
    def has_interval(self) -> bool:
        return not (math.isnan(self.low) or math.isnan(self.high))

    def text(self, digits: int = 3) -> str:
        """'0.512 [0.47, 0.55] n=6' (the interval at one digit less), '0.512 n=1' without one."""
        if math.isnan(self.point):
            return "—"
        if not self.has_interval:
            return f"{self.point:.{digits}f} n={self.n}"
        d = max(digits - 1, 1)
        return f"{self.point:.{digits}f} [{self.low:.{d}f}, {self.high:.{d}f}] n={self.n}"

    def columns(self, name: str) -> dict[str, float]:
        """How a table row stores it: {name, name_low, name_high, name_n}."""
        return {name: self.point, f"{name}_low": self.low, f"{name}_high": self.high, f"{name}_n": self.n}

    @classmethod
    def from_columns(cls, row, name: str) -> Estimate:
        """The estimate `columns(name)` stored in a table row (a dict or a pandas row)."""
        n = row.get(f"{name}_n", 0)
        return cls(row[name], row[f"{name}_low"], row[f"{name}_high"], 0 if n != n else int(n))


NO_ESTIMATE = Estimate(math.nan, math.nan, math.nan, 0)


def _rliable():
    # rliable imports arch, pandas and seaborn: imported where used, not by every `rlvr` command
    from rliable import library, metrics

    return library, metrics


@contextmanager
def _seeded_rliable():
    """rliable, seeded and quiet. Its bootstraps draw their indices from numpy's global RNG (the
    random_state it takes reaches only arch, which never draws), so the global RNG is seeded for
    the call and restored after: every interval is the same whatever ran before it. arch 7
    deprecates the random_state rliable passes it: that warning is silenced."""
    from rliable import library

    state = np.random.get_state()
    np.random.seed(SEED)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield library
    finally:
        np.random.set_state(state)


def as_matrix(scores) -> np.ndarray:
    """runs × tasks; a flat list is one task."""
    array = np.asarray(scores, dtype=float)
    return array[:, None] if array.ndim == 1 else array


def _bootstrap(score_dict: Mapping, func, task_bootstrap: bool, reps: int) -> tuple[float, float]:
    with _seeded_rliable() as library:
        _, intervals = library.get_interval_estimates(
            dict(score_dict), func, reps=reps, confidence_interval_size=CONFIDENCE,
            task_bootstrap=task_bootstrap, random_state=np.random.RandomState(SEED),
        )
    low, high = np.asarray(next(iter(intervals.values()))).ravel()[:2]
    return float(low), float(high)


def estimate(scores, statistic: str = "mean", *, task_bootstrap: bool | None = None,
             reps: int = REPS) -> Estimate:
    """Mean or IQM (interquartile mean) of a runs × tasks matrix with its stratified-bootstrap
    interval. task_bootstrap (default: when there are several tasks) resamples the tasks too."""
    _, metrics = _rliable()
    func = {"mean": metrics.aggregate_mean, "iqm": metrics.aggregate_iqm}[statistic]
    matrix = as_matrix(scores)
    if matrix.size == 0:
        return NO_ESTIMATE
    point = float(func(matrix))
    if matrix.shape[0] < 2:
        return Estimate(point, math.nan, math.nan, matrix.size)
    resample_tasks = matrix.shape[1] > 1 if task_bootstrap is None else task_bootstrap
    low, high = _bootstrap({"x": matrix}, lambda m: np.array([func(m)]), resample_tasks, reps)
    return Estimate(point, low, high, matrix.size)


def improvement(x, y, *, reps: int = REPS) -> Estimate:
    """P(X > Y) + P(X = Y) / 2 for a run of X against a run of Y on the same task, averaged over
    tasks (rliable's probability of improvement), with its interval; n = runs of X."""
    _, metrics = _rliable()
    a, b = as_matrix(x), as_matrix(y)
    if a.size == 0 or b.size == 0:
        return NO_ESTIMATE
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"probability of improvement needs the same tasks on both sides: {a.shape[1]} vs {b.shape[1]}")
    point = float(metrics.probability_of_improvement(a, b))
    if min(a.shape[0], b.shape[0]) < 2:
        return Estimate(point, math.nan, math.nan, a.size)
    low, high = _bootstrap({"x,y": (a, b)}, lambda p, q: np.array([metrics.probability_of_improvement(p, q)]),
                           False, reps)
    return Estimate(point, low, high, a.size)


def wilson(k: int, n: int, confidence: float = CONFIDENCE) -> Estimate:
    """The Wilson score interval of a rate k/n (exact enough at n = 6, and never zero-width)."""
    if n == 0:
        return NO_ESTIMATE
    from scipy.stats import norm

    z = float(norm.ppf(0.5 + confidence / 2))
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return Estimate(p, max(0.0, centre - half), min(1.0, centre + half), n)


def performance_profile(score_dict: Mapping[str, np.ndarray], taus: np.ndarray, *, reps: int = REPS):
    """{name: fraction of runs (over all tasks) scoring above each τ}, {name: (2, len(τ)) band}."""
    with _seeded_rliable() as library:
        profiles, bands = library.create_performance_profile(
            {k: as_matrix(v) for k, v in score_dict.items()}, taus, reps=reps,
            confidence_interval_size=CONFIDENCE,
        )
    return profiles, bands


def supported_best(candidates: Mapping[str, np.ndarray], *, min_runs: int = 3, reps: int = REPS) -> str | None:
    """The candidate with the highest mean if its lead is supported: at least `min_runs` runs on
    both sides and the interval of P(best > runner-up) above 0.5. None for a tie or a lead
    inside the noise."""
    ranked = sorted(((float(np.mean(v)), k) for k, v in candidates.items() if np.size(v)), reverse=True)
    if len(ranked) < 2:
        return None
    (best_mean, best), (second_mean, second) = ranked[:2]
    a, b = as_matrix(candidates[best]), as_matrix(candidates[second])
    if best_mean == second_mean or min(a.shape[0], b.shape[0]) < min_runs:
        return None
    return best if improvement(a, b, reps=reps).low > 0.5 else None
