"""Learning curves over training and ScaleRL's saturating fit of them (Khatri et al. 2025, "The
Art of Scaling Reinforcement Learning Compute for LLMs", arXiv 2510.13786):

    R(C) − R0 = (A − R0) / (1 + (C_mid / C)^B)

C is the rollout compute spent up to a checkpoint (generated tokens: the sum of
rollout/generated_tokens in metrics.jsonl), R its held-out pass@1 (the DAG's `curve` rule:
runs/.../curve/<suite>.json), R0 the base's (C = 0). A is the asymptote, B the efficiency
exponent, C_mid the compute at which half of the gain A − R0 is reached. Each algorithm's curve
is the mean over its runs at every checkpoint; the intervals of A, B and C_mid come from
refitting on runs resampled with replacement.

Its files (REPORTS, rlvr/report/__init__.py): scaling.md, scaling.csv, and one figure per suite.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd

from rlvr.io import csv_text
from rlvr.report import Options
from rlvr.report.header import Header
from rlvr.report.intervals import CONFIDENCE, SEED, Estimate
from rlvr.report.plots import colors_for, new_figure, png_bytes
from rlvr.report.runs import FINISHED, Run, eval_scores, read_json, series
from rlvr.report.runs import PRIMARY_METRIC as METRIC

FIT_REPS = 200  # refits per interval: each is a small least-squares problem
PARAMS = ("A", "B", "C_mid")


def saturating(c, r0: float, a: float, b: float, c_mid: float):
    """ScaleRL's sigmoidal compute curve; R(0) = R0, R(∞) = A, R(C_mid) = (A + R0) / 2."""
    c = np.asarray(c, dtype=float)
    with np.errstate(divide="ignore", over="ignore"):
        return r0 + (a - r0) / (1.0 + (c_mid / np.maximum(c, 1e-300)) ** b)


def fit(compute, score, r0: float, start: tuple[float, float, float] | None = None) -> tuple[float, float, float]:
    """(A, B, C_mid) by least squares, R0 held at the base's score. A in [0, 1] (a rate), B in
    [0.05, 20], C_mid within 1e-3 to 1e3 × the largest C (searched in log space). Without
    `start`, the best of nine starts (the loss is not convex in C_mid)."""
    from scipy.optimize import least_squares

    c, r = np.asarray(compute, dtype=float), np.asarray(score, dtype=float)
    if len(c) < 3:
        raise ValueError(f"a saturating fit needs at least 3 checkpoints, got {len(c)}")
    top = float(c.max())

    def residual(p):
        a, log_b, log_mid = p
        return saturating(c, r0, a, math.exp(log_b), math.exp(log_mid)) - r

    lower = [0.0, math.log(0.05), math.log(1e-3 * top)]
    upper = [1.0, math.log(20.0), math.log(1e3 * top)]
    if start is not None:
        starts = [[start[0], math.log(start[1]), math.log(start[2])]]
    else:
        starts = [[a0, 0.0, math.log(m * top)] for a0 in (float(r.max()), float(r[-1]), 0.5 * (float(r.max()) + 1.0))
                  for m in (0.1, 0.5, 2.0)]
    best = None
    for x0 in starts:
        x0 = np.clip(x0, np.add(lower, 1e-9), np.subtract(upper, 1e-9))
        res = least_squares(residual, x0, bounds=(lower, upper))
        if best is None or res.cost < best.cost:
            best = res
    a, log_b, log_mid = best.x
    return float(a), float(math.exp(log_b)), float(math.exp(log_mid))


def mean_curve(curves: list[pd.DataFrame]) -> pd.DataFrame:
    """Mean compute and score at the steps every run reached (columns step, compute, score)."""
    steps = set.intersection(*(set(c.step) for c in curves))
    rows = [c[c.step.isin(steps)].set_index("step")[["compute", "score"]] for c in curves]
    return pd.concat(rows).groupby(level=0).mean().reset_index().sort_values("step")


def bootstrap_fit(curves: list[pd.DataFrame], r0s: list[float], reps: int = FIT_REPS) -> dict[str, Estimate]:
    """{A, B, C_mid}: the fit of the mean curve, with the percentile interval of refits on runs
    resampled with replacement (their R0s with them)."""
    point = fit(*_xy(mean_curve(curves)), float(np.mean(r0s)))
    rng = np.random.default_rng(SEED)
    draws = []
    if len(curves) > 1:
        for _ in range(reps):
            pick = rng.integers(0, len(curves), len(curves))
            try:
                sample = mean_curve([curves[i] for i in pick])
                draws.append(fit(*_xy(sample), float(np.mean([r0s[i] for i in pick])), start=point))
            except ValueError:
                continue
    tail = 100 * (1 - CONFIDENCE) / 2
    out = {}
    for i, name in enumerate(PARAMS):
        values = np.array([d[i] for d in draws])
        low, high = (np.percentile(values, [tail, 100 - tail]) if len(values) else (math.nan, math.nan))
        out[name] = Estimate(point[i], float(low), float(high), len(curves))
    return out


def _xy(curve: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    return curve.compute.to_numpy(), curve.score.to_numpy()


# ---------------------------------------------------------------- reading the runs


def run_curve(run: Run) -> pd.DataFrame | None:
    """(step, compute, score) of one run's curve file, compute from its metrics.jsonl."""
    data = read_json(run.path / "curve" / f"{run.suite}.json")
    if not data or not isinstance(data.get("points"), list):
        return None
    metrics = run.metrics.set_index("step")
    tokens = series(metrics, "rollout/generated_tokens").cumsum()
    rows = []
    for point in data["points"]:
        step, score = point.get("step"), eval_scores(point).get(METRIC)
        if isinstance(step, int) and score is not None and step in tokens.index:
            rows.append({"step": step, "compute": float(tokens.loc[step]), "score": score})
    return pd.DataFrame(rows) if rows else None


def collect(runs: list[Run]) -> dict[tuple[str, str], list[tuple[pd.DataFrame, float]]]:
    """{(suite, label): [(curve, R0 of its base)]} over the finished runs that hold a curve."""
    r0 = {(r.suite, r.family): eval_scores(r.evals.get(r.suite, {})).get(METRIC) for r in runs if r.is_base}
    out: dict[tuple[str, str], list] = {}
    for r in runs:
        if r.is_base or r.state not in FINISHED:
            continue
        curve, base = run_curve(r), r0.get((r.suite, r.family))
        if curve is not None and base is not None:
            out.setdefault((r.suite, r.algorithm), []).append((curve, base))
    return out


# ---------------------------------------------------------------- tables and figures


def fit_frame(groups: dict, reps: int) -> pd.DataFrame:
    rows = []
    for (suite, label), items in sorted(groups.items()):
        curves, r0s = [c for c, _ in items], [b for _, b in items]
        try:
            est = bootstrap_fit(curves, r0s, reps)
        except ValueError as err:  # too few checkpoints that every run reached
            rows.append({"suite": suite, "algorithm": label, "runs": len(items), "note": str(err)})
            continue
        last = mean_curve(curves).iloc[-1]
        row = {"suite": suite, "algorithm": label, "runs": len(items), "R0": float(np.mean(r0s)),
               "final_compute": last.compute, "final_score": last.score, "note": ""}
        for name, e in est.items():
            row |= {name: e.point, f"{name}_low": e.low, f"{name}_high": e.high}
        rows.append(row)
    return pd.DataFrame(rows)


def _range(row: pd.Series, name: str, fmt: str) -> str:
    point, low, high = row[name], row[f"{name}_low"], row[f"{name}_high"]
    band = "" if pd.isna(low) else f" [{low:{fmt}}, {high:{fmt}}]"
    return f"{point:{fmt}}{band}"


def markdown(fits: pd.DataFrame, header: str) -> str:
    legend = (
        f"ScaleRL's saturating fit R(C) − R0 = (A − R0) / (1 + (C_mid / C)^B) of held-out {METRIC} "
        "against rollout compute C (generated tokens) at every intermediate checkpoint (the DAG's "
        "`curve` rule), R0 = the base's score. The fit is of the mean curve over runs; intervals: 95% "
        f"percentile of {FIT_REPS} refits on runs resampled with replacement. A: asymptote; B: "
        "efficiency exponent (larger = reaches A faster around C_mid); C_mid: tokens to half the "
        "gain. A fit past the last checkpoint is an extrapolation: compare A with `final score` "
        "and C_mid with `final C`."
    )
    parts = [header, legend]
    for suite in sorted(set(fits.suite)):
        lines = ["| algorithm | runs | R0 | A | B | C_mid (tokens) | final C | final score |", "|" + "---|" * 8]
        for _, r in fits[fits.suite == suite].iterrows():
            if r.note:
                lines.append(f"| {r.algorithm} | {r.runs} | no fit: {r.note} | | | | | |")
                continue
            lines.append(f"| {r.algorithm} | {r.runs} | {r.R0:.3f} | {_range(r, 'A', '.3f')} | "
                         f"{_range(r, 'B', '.2f')} | {_range(r, 'C_mid', '.3g')} | {r.final_compute:.3g} | "
                         f"{r.final_score:.3f} |")
        parts += [f"## {suite}", "\n".join(lines), f"Figure: figures/{suite}_scaling.png."]
    return "\n\n".join(parts) + "\n"


def figure(groups: dict, fits: pd.DataFrame, suite: str) -> bytes:
    fig = new_figure(6.4, 4.4)
    ax = fig.subplots()
    labels = sorted(label for s, label in groups if s == suite)
    colors = colors_for(labels)
    for label in labels:
        items = groups[suite, label]
        curve = mean_curve([c for c, _ in items])
        ax.plot(curve.compute, curve.score, "o", color=colors[label], markersize=4)
        row = fits[(fits.suite == suite) & (fits.algorithm == label) & (fits.note == "")]
        if len(row):
            r = row.iloc[0]
            grid = np.linspace(0, curve.compute.max(), 200)
            ax.plot(grid, saturating(grid, r.R0, r.A, r.B, r.C_mid), color=colors[label], linewidth=1.3,
                    label=f"{label}: A={r.A:.3f}, B={r.B:.2f}")
    ax.set(xlabel="rollout compute C (generated tokens)", ylabel=f"held-out {METRIC}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(f"{suite}: mean over runs (points) and the saturating fit (lines)", fontsize=10)
    return png_bytes(fig)


def write(runs: list[Run], header: Header, options: Options) -> dict:
    """The markdown and CSV tables and each suite's figure, when runs hold curves; else nothing."""
    groups = collect(runs)
    if not groups:
        return {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        fits = fit_frame(groups, min(options.reps, FIT_REPS))
    files: dict = {"markdown": markdown(fits, header.text("Scaling")), "csv": csv_text(fits)}
    for suite in sorted({s for s, _ in groups}):
        files["figure", suite] = figure(groups, fits, suite)
    return files
