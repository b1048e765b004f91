"""The stress study's tables and figures, where the matrix sweeps a setting (config/stress.yaml's
`sweep: train.lr`; `rlvr aggregate --sweep train.lr`).

Runs are grouped by suite × model family × registered algorithm × the swept setting, pooling the
labels of one family trained from different bases (models.base_seed: the model labels are the
strata); the base is a factor in every interval (runs × bases, both resampled: rlvr/report/intervals.py).
Per run:

    collapsed, steps_to_collapse   the detector's verdict (status.json)
    reward_change                  mean training reward of the last EDGE steps − the first EDGE
    steps_to_half_reward           first step whose EDGE-step mean reward is ≤ half the initial
                                   (censored: a run that never got there counts in `reached`)
    heldout                        pass@1 of the final checkpoint on the suite's test split
    heldout_change                 heldout − the run's own base
A binary detector misses a run that kept half its entropy but lost most of its reward, hence the
continuous measures beside the collapse rate.

Its files (REPORTS, rlvr/report/__init__.py): stress.md, stress.csv (one row per cell),
stress_runs.csv (one row per run), and six figures per suite.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from rlvr.io import csv_text
from rlvr.report import Options
from rlvr.report.header import Header
from rlvr.report.intervals import Estimate, estimate, improvement, wilson
from rlvr.report.plots import colors_for, new_figure, png_bytes
from rlvr.report.runs import EDGE, FINISHED, Run, eval_scores, series
from rlvr.report.runs import PRIMARY_METRIC as METRIC
from rlvr.report.runs import TAXONOMY_BINS as BINS

CELL = ["suite", "family", "algorithm", "setting"]


# ---------------------------------------------------------------- per run


def steps_to_fraction(reward: pd.Series, fraction: float = 0.5) -> float:
    """First step at which the EDGE-step rolling mean reward is ≤ fraction × the initial mean
    (nan if never, or if the initial reward is 0)."""
    if len(reward) < EDGE:
        return math.nan
    initial = reward.head(EDGE).mean()
    if initial <= 0:
        return math.nan
    rolling = reward.rolling(EDGE).mean()
    hit = rolling[rolling <= fraction * initial]
    return float(hit.index[0]) if len(hit) else math.nan


def run_measures(run: Run, base_scores: dict[tuple[str, str], float], sweep: str) -> dict:
    reward = series(run.metrics.set_index("step"), "rollout/reward_mean")
    own = eval_scores(run.evals.get(run.suite, {}))
    heldout = own.get(METRIC, math.nan)
    base = base_scores.get((run.suite, run.family), math.nan)
    collapsed = run.state == "collapsed"
    return {
        "suite": run.suite, "family": run.model_family, "algorithm": run.algorithm_name,
        "setting": run.setting(sweep), "label": run.algorithm, "model": run.family,
        "seed": run.seed, "state": run.state,
        "collapsed": collapsed,
        "steps_to_collapse": float(run.status.get("step", math.nan)) if collapsed else math.nan,
        "steps_run": float(run.status.get("steps_run", run.status.get("step", math.nan))),
        "reward_initial": reward.head(EDGE).mean() if len(reward) else math.nan,
        "reward_change": reward.tail(EDGE).mean() - reward.head(EDGE).mean() if len(reward) else math.nan,
        "steps_to_half_reward": steps_to_fraction(reward),
        "heldout": heldout,
        "heldout_change": heldout - base,
        "wall_s": run.wall_s(),
    }


def run_frame(runs: list[Run], sweep: str) -> pd.DataFrame:
    base_scores = {
        (r.suite, r.family): eval_scores(r.evals.get(r.suite, {})).get(METRIC, math.nan)
        for r in runs if r.is_base
    }
    rows = [run_measures(r, base_scores, sweep) for r in runs if not r.is_base and r.state in FINISHED]
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- per cell


def by_base(group: pd.DataFrame, column: str) -> np.ndarray:
    """runs × bases when every base holds the same number of finite values (the base then a
    factor of the bootstrap), else one column of all of them."""
    cols = [g[column].dropna().to_numpy() for _, g in group.groupby("model")]
    if len(cols) > 1 and len({len(c) for c in cols}) == 1 and len(cols[0]):
        return np.stack(cols, axis=1)
    return np.concatenate(cols)[:, None] if cols else np.empty((0, 1))


def cell_row(key: tuple, group: pd.DataFrame, reference: pd.DataFrame | None, reps: int) -> dict:
    n = len(group)
    rate = wilson(int(group.collapsed.sum()), n)
    collapse_steps = group.steps_to_collapse.dropna()
    reached = group.steps_to_half_reward.dropna()
    row = dict(zip(CELL, key, strict=True)) | {
        "runs": n, "bases": group.model.nunique(),
        "collapse_rate": rate.point, "collapse_low": rate.low, "collapse_high": rate.high,
        "collapsed": int(group.collapsed.sum()),
        "steps_to_collapse_median": collapse_steps.median() if len(collapse_steps) else math.nan,
        "steps_to_collapse_min": collapse_steps.min() if len(collapse_steps) else math.nan,
        "steps_to_collapse_max": collapse_steps.max() if len(collapse_steps) else math.nan,
        "half_reward_reached": len(reached),
        "steps_to_half_reward_median": reached.median() if len(reached) else math.nan,
    }
    for column in ("reward_change", "heldout", "heldout_change"):
        est = estimate(by_base(group, column), reps=reps)
        row |= est.columns(column)
    if reference is not None:
        # per base, then averaged over the bases (rliable's tasks): a run is compared with the
        # baseline's runs from its own base, so the base-to-base gap does not dilute the answer
        mine, theirs = by_base(group, "heldout"), by_base(reference, "heldout")
        if mine.shape[1] != theirs.shape[1]:
            mine, theirs = mine.reshape(-1, 1), theirs.reshape(-1, 1)
        est = improvement(mine, theirs, reps=reps)
        row |= {"p_heldout_over_baseline": est.point, "p_low": est.low, "p_high": est.high}
    return row


def cell_frame(per_run: pd.DataFrame, baseline: str, reps: int) -> pd.DataFrame:
    rows = []
    groups = dict(tuple(per_run.groupby(CELL, sort=True)))
    for key, group in groups.items():
        suite, family, algorithm, setting = key
        ref = groups.get((suite, family, baseline, setting))
        rows.append(cell_row(key, group, None if algorithm == baseline else ref, reps))
    return pd.DataFrame(rows)


def _fmt_setting(value) -> str:
    return f"{value:g}" if isinstance(value, (int, float)) else str(value)


def suite_table(cells: pd.DataFrame, sweep: str, baseline: str) -> str:
    head = (f"| algorithm | {sweep} | runs | collapse rate [95% Wilson] | steps to collapse median (range) | "
            f"reward change last−first | half reward reached: runs, median step | held-out {METRIC} | "
            f"Δ held-out vs base | P(held-out > {baseline}) |")
    lines = [head, "|" + "---|" * 10]
    for _, r in cells.sort_values(["algorithm", "setting"]).iterrows():
        steps = "—" if pd.isna(r.steps_to_collapse_median) else (
            f"{r.steps_to_collapse_median:.0f} ({r.steps_to_collapse_min:.0f}–{r.steps_to_collapse_max:.0f})")
        half = f"{r.half_reward_reached}/{r.runs}" + (
            "" if pd.isna(r.steps_to_half_reward_median) else f", {r.steps_to_half_reward_median:.0f}")
        versus = "—"
        if not pd.isna(r.get("p_heldout_over_baseline", math.nan)):
            versus = Estimate(r.p_heldout_over_baseline, r.p_low, r.p_high, int(r.runs)).text(2)
        lines.append(
            f"| {r.algorithm} | {_fmt_setting(r.setting)} | {r.runs} | {r.collapsed}/{r.runs} = {r.collapse_rate:.2f} "
            f"[{r.collapse_low:.2f}, {r.collapse_high:.2f}] | {steps} | {Estimate.from_columns(r, 'reward_change').text()} | {half} | "
            f"{Estimate.from_columns(r, 'heldout').text()} | {Estimate.from_columns(r, 'heldout_change').text()} | {versus} |"
        )
    return "\n".join(lines)


def base_notes(runs: list[Run], suite: str) -> str:
    bases = [r for r in runs if r.is_base and r.suite == suite]
    parts = []
    for r in sorted(bases, key=lambda r: (r.model_family, r.family)):
        score = eval_scores(r.evals.get(suite, {})).get(METRIC)
        if score is not None:
            parts.append(f"`{r.family}` ({r.model_family}) {score:.3f}")
    return f"Bases, held-out {METRIC} before RL: " + "; ".join(parts) + "." if parts else ""


def markdown(runs: list[Run], per_run: pd.DataFrame, cells: pd.DataFrame, header: str, sweep: str,
             baseline: str) -> str:
    wall = per_run.wall_s.sum() / 60 if "wall_s" in per_run else math.nan
    legend = (
        f"One row per algorithm × `{sweep}`, pooling both bases of a family; runs = finished runs "
        f"(completed + collapsed), bases × seeds. Intervals: 95%, the collapse rate's by Wilson, the "
        f"others by the stratified bootstrap over seeds and bases (rliable, bases resampled too). "
        f"reward change = mean training reward of the last {EDGE} steps − the first {EDGE} (a "
        f"collapsed run stops where the detector fired). half reward = the first step whose "
        f"{EDGE}-step mean reward falls to half the initial. Δ held-out = the final checkpoint's "
        f"{METRIC} on the test split − its base's. P(held-out > {baseline}) = probability that a run "
        f"beats a `{baseline}` run from the same base at the same {sweep}, averaged over the bases "
        f"(0.5 = no difference). Training wall time "
        f"of these runs: {wall:.1f} min summed (2 runs at a time on 2 cores)."
    )
    parts = [header, legend]
    for suite in sorted(set(cells.suite)):
        parts += [f"## {suite}", base_notes(runs, suite),
                  suite_table(cells[cells.suite == suite], sweep, baseline),
                  f"Figures: figures/stress_{suite}_collapse.png, _heldout, _steps, _entropy, _grad_norm, _taxonomy."]
    return "\n\n".join(p for p in parts if p) + "\n"


# ---------------------------------------------------------------- figures


def _by_algorithm(cells: pd.DataFrame):
    for algorithm, group in cells.groupby("algorithm"):
        yield algorithm, group.sort_values("setting")


def _log_x(ax, settings) -> None:
    if all(isinstance(s, (int, float)) and s > 0 for s in settings):
        ax.set_xscale("log")
        ax.set_xticks(sorted(settings), [f"{s:g}" for s in sorted(settings)])
        ax.minorticks_off()


def _jitter(settings: np.ndarray, i: int, count: int) -> np.ndarray:
    """Spread the algorithms' markers around each setting (multiplicatively: the axis is log)."""
    return settings * (1 + 0.04 * (i - (count - 1) / 2))


def rate_figure(cells: pd.DataFrame, suite: str, sweep: str, colors: dict, column: str, band: tuple[str, str],
                ylabel: str) -> bytes:
    """`column` against the setting with its interval (columns `band`), one line per algorithm."""
    fig = new_figure(6.4, 4.2)
    ax = fig.subplots()
    algos = list(_by_algorithm(cells))
    for i, (algorithm, g) in enumerate(algos):
        x = _jitter(g.setting.to_numpy(dtype=float), i, len(algos))
        y = g[column].to_numpy(dtype=float)
        err = np.vstack([y - g[band[0]].to_numpy(dtype=float), g[band[1]].to_numpy(dtype=float) - y])
        ax.errorbar(x, y, yerr=np.clip(np.nan_to_num(err), 0, None), color=colors[algorithm], marker="o", capsize=3, label=algorithm)
    _log_x(ax, set(cells.setting))
    ax.set(xlabel=sweep, ylabel=ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    low, high = int(cells.runs.min()), int(cells.runs.max())
    runs = f"{low}" if low == high else f"{low}–{high}"
    ax.set_title(f"{suite}: {ylabel} (95% interval, n = {runs} runs per point)", fontsize=10)
    return png_bytes(fig)


def steps_figure(per_run: pd.DataFrame, suite: str, sweep: str, colors: dict) -> bytes:
    """Steps to collapse of every run (filled); runs that never collapsed at their last step (hollow)."""
    fig = new_figure(6.4, 4.2)
    ax = fig.subplots()
    algos = sorted(set(per_run.algorithm))
    for i, algorithm in enumerate(algos):
        g = per_run[per_run.algorithm == algorithm]
        x = _jitter(g.setting.to_numpy(dtype=float), i, len(algos))
        hit = g.collapsed.to_numpy(dtype=bool)
        ax.scatter(x[hit], g.steps_to_collapse[hit], color=colors[algorithm], label=algorithm, s=18)
        ax.scatter(x[~hit], g.steps_run[~hit], facecolors="none", edgecolors=colors[algorithm], s=18)
    _log_x(ax, set(per_run.setting))
    ax.set(xlabel=sweep, ylabel="step")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"{suite}: steps to collapse (filled); hollow = not collapsed by its last step", fontsize=10)
    return png_bytes(fig)


def _settings(runs: list[Run], sweep: str) -> list:
    return sorted({r.setting(sweep) for r in runs}, key=lambda s: (str(type(s)), s))


def _mean_over_runs(runs: list[Run], key: str) -> pd.Series | None:
    """Per step, the mean of `key` over the runs that logged it there (None if none did)."""
    columns = [r.metrics.set_index("step")[key] for r in runs if key in r.metrics]
    return pd.concat(columns, axis=1).apply(pd.to_numeric, errors="coerce").mean(axis=1) if columns else None


def _plot_algorithms(ax, runs: list[Run], key: str, colors: dict, linewidth: float) -> None:
    for algorithm in sorted({r.algorithm_name for r in runs}):
        mean = _mean_over_runs([r for r in runs if r.algorithm_name == algorithm], key)
        if mean is not None:
            ax.plot(mean.index, mean, color=colors[algorithm], label=algorithm, linewidth=linewidth)


def trajectory_figure(runs: list[Run], suite: str, sweep: str, key: str, ylabel: str, colors: dict) -> bytes:
    """One panel per setting, one line per algorithm: the mean over runs alive at each step."""
    finished = [r for r in runs if not r.is_base and r.suite == suite and r.state in FINISHED and key in r.metrics]
    settings = _settings(finished, sweep)
    fig = new_figure(3.6 * max(len(settings), 1), 3.4)
    axes = np.atleast_1d(fig.subplots(1, max(len(settings), 1), sharey=True))
    for ax, setting in zip(axes, settings, strict=False):
        _plot_algorithms(ax, [r for r in finished if r.setting(sweep) == setting], key, colors, 1.3)
        ax.set(title=f"{sweep} = {_fmt_setting(setting)}", xlabel="step")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(ylabel)
    if key == "actor/grad_norm":
        for ax in axes:
            ax.set_yscale("log")
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 6))
    fig.suptitle(f"{suite}: {ylabel}, mean over the runs still training at each step")
    return png_bytes(fig)


def taxonomy_figure(runs: list[Run], suite: str, sweep: str, colors: dict) -> bytes:
    """Rows = settings, columns = the four token bins: each bin's share of the gradient mass over
    training, one line per algorithm."""
    finished = [r for r in runs if not r.is_base and r.suite == suite and r.state in FINISHED]
    settings = _settings(finished, sweep)
    fig = new_figure(3.2 * len(BINS), 2.4 * max(len(settings), 1) + 0.8)
    axes = np.atleast_2d(fig.subplots(max(len(settings), 1), len(BINS), sharex=True, sharey=True, squeeze=False))
    for row, setting in enumerate(settings):
        for col, b in enumerate(BINS):
            ax = axes[row, col]
            _plot_algorithms(ax, [r for r in finished if r.setting(sweep) == setting], f"taxonomy/{b}_grad_mass", colors, 1.1)
            ax.grid(alpha=0.3)
            if row == 0:
                ax.set_title(f"{b} gradient mass", fontsize=9)
            if col == 0:
                ax.set_ylabel(f"{sweep} = {_fmt_setting(setting)}", fontsize=9)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 6))
    fig.suptitle(f"{suite}: token-taxonomy share of the gradient mass over training (mean over runs)")
    return png_bytes(fig)


# ---------------------------------------------------------------- entry point


def write(runs: list[Run], header: Header, options: Options) -> dict:
    """The markdown and the two CSV tables, and each suite's figures; nothing without finished runs."""
    sweep, baseline = options.sweep, options.baseline
    per_run = run_frame(runs, sweep)
    if per_run.empty:
        return {}
    cells = cell_frame(per_run, baseline, options.reps)
    colors = colors_for(per_run.algorithm)
    files: dict = {
        "markdown": markdown(runs, per_run, cells, header.text("Stress"), sweep, baseline),
        "csv": csv_text(cells),
        "runs_csv": csv_text(per_run),
    }
    for suite in sorted(set(per_run.suite)):
        c, p = cells[cells.suite == suite], per_run[per_run.suite == suite]
        files["collapse", suite] = rate_figure(c, suite, sweep, colors, "collapse_rate", ("collapse_low", "collapse_high"), "collapse rate")
        files["heldout", suite] = rate_figure(c, suite, sweep, colors, "heldout", ("heldout_low", "heldout_high"), f"held-out {METRIC}")
        files["steps", suite] = steps_figure(p, suite, sweep, colors)
        files["entropy", suite] = trajectory_figure(runs, suite, sweep, "actor/entropy", "token entropy", colors)
        files["grad_norm", suite] = trajectory_figure(runs, suite, sweep, "actor/grad_norm", "gradient norm", colors)
        files["taxonomy", suite] = taxonomy_figure(runs, suite, sweep, colors)
    return files
