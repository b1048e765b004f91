"""Aggregate one experiment's runs into results/: leaderboard, stability table, training curves.

Reads the runs tree (rlvr/runs.py) and writes, each file atomically,
    leaderboard.md / .csv   eval metrics per suite: algorithms (base first) × model × metric, the
                            mean with its 95% stratified-bootstrap interval and n (rlvr/intervals.py);
                            bold only for a lead the intervals support; an "all tasks" table (mean,
                            IQM, probability of improvement over the baseline algorithm)
    stability.md / .csv     collapse rate (Wilson interval) and reasons, entropy final/initial, max
                            grad norm, reward peak/final with intervals, steps to collapse, the
                            token-taxonomy fractions
    figures/<suite>_{entropy,reward,grad_norm}.png, figures/performance_profile.png
    stress.md / .csv, figures/stress_*.png    with --sweep (rlvr/stress.py)
    scaling.md / .csv, figures/<suite>_scaling.png   where runs hold learning curves (rlvr/curves.py)

Runs whose status is `running` or missing are *incomplete*; `failed` runs are listed with their
reason. Both are excluded from every mean; collapsed runs are included (they are an outcome).
"""

from __future__ import annotations

import json
import math
import re
import subprocess
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from rlvr.report import scaling as curves
from rlvr.report import stress
from rlvr.report.intervals import (
    REPS,
    Estimate,
    estimate,
    improvement,
    performance_profile,
    supported_best,
    wilson,
)
from rlvr.io import atomic_write_bytes, atomic_write_text, csv_text
from rlvr.report.plots import PALETTE, colors_for, new_figure, png_bytes
from rlvr.report.runs import (
    BASE_LABEL,
    EDGE,
    FINISHED,
    PRIMARY_METRIC,
    TAXONOMY_BINS,
    Run,
    discover_runs,
    eval_scores,
    experiment_dir,
    is_number,
    read_json,
    read_yaml,
    series,
)

CHANCE_LABEL = "chance level"
CURVES = {  # figure name -> (metrics key, axis label)
    "entropy": ("actor/entropy", "token entropy"),
    "reward": ("rollout/reward_mean", "mean reward"),
    "grad_norm": ("actor/grad_norm", "gradient norm (before clipping)"),
}
BINS = TAXONOMY_BINS
TAXONOMY = [f"{b}_frac" for b in BINS] + [f"{b}_grad_mass" for b in BINS]
# per-run measures, in the order of the stability table's columns
PER_RUN = ["steps_to_collapse", "entropy_ratio", "grad_norm_max", "reward_peak", "reward_final"]
STABILITY_COLUMNS = [
    "suite", "family", "algorithm", "runs", "collapsed", "collapse_rate", "collapse_rate_low",
    "collapse_rate_high", "collapse_reasons", "failed", "incomplete",
    *(f"{k}{end}" for k in PER_RUN for end in ("", "_low", "_high", "_n")), *TAXONOMY,
]
KEYS = ["suite", "eval_suite", "family", "algorithm", "metric"]
LEADERBOARD_COLUMNS = [*KEYS, "mean", "ci_low", "ci_high", "std", "iqm", "iqm_low", "iqm_high", "n"]
MIN_RUNS_FOR_BOLD = 3  # below it a full separation happens by chance too often (1 in 6 at 2 vs 2)
VERSION_KEYS = ("torch", "transformers", "deepspeed", "vllm", "lm-eval", "peft", "math-verify")


# ---------------------------------------------------------------- leaderboard


def chance_of(data: dict) -> float | None:
    value = data.get("chance", (data.get("metrics") or {}).get("chance"))
    return float(value) if is_number(value) else None


def _metric_order(metric: str) -> tuple:
    """pass@1, avg@k, pass@k, em, f1, then anything else alphabetically."""
    kind, _, k = metric.partition("@")
    rank = {"pass": 0 if k == "1" else 2, "avg": 1, "em": 3, "f1": 4}.get(kind, 5)
    return (rank, int(k) if k.isdigit() else 0, metric)


def _algorithm_order(label: str) -> tuple:
    return ({BASE_LABEL: 0, CHANCE_LABEL: 1}.get(label, 2), label)


def score_frame(runs: list[Run]) -> pd.DataFrame:
    """One row per run × eval suite × metric: the per-seed values every estimate is made from."""
    rows = [
        {"suite": r.suite, "eval_suite": es, "family": r.family, "algorithm": r.label, "metric": m,
         "seed": -1 if r.is_base else r.seed, "value": v}
        for r in runs if r.is_base or r.state in FINISHED
        for es, data in r.evals.items() for m, v in eval_scores(data).items()
    ]
    return pd.DataFrame(rows, columns=[*KEYS, "seed", "value"])


def leaderboard_frame(runs: list[Run], scores: pd.DataFrame, reps: int = REPS) -> pd.DataFrame:
    """Tidy table: one row per suite × eval suite × model × algorithm × metric, with intervals."""
    rows = []
    for key, group in scores.groupby(KEYS, sort=False):
        values = group["value"].to_numpy()
        mean, iqm = estimate(values, reps=reps), estimate(values, "iqm", reps=reps)
        rows.append({**dict(zip(KEYS, key, strict=True)), "mean": mean.point, "ci_low": mean.low,
                     "ci_high": mean.high, "std": values.std(ddof=1) if len(values) > 1 else math.nan,
                     "iqm": iqm.point, "iqm_low": iqm.low, "iqm_high": iqm.high, "n": len(values)})
    table, chance = pd.DataFrame(rows, columns=LEADERBOARD_COLUMNS), _chance_rows(runs)
    return pd.concat([table, chance], ignore_index=True) if len(table) and len(chance) else table


def _chance_rows(runs: list[Run]) -> pd.DataFrame:
    rows = [
        {"suite": r.suite, "eval_suite": es, "family": r.family, "value": c}
        for r in runs if r.is_base or r.state in FINISHED
        for es, data in r.evals.items() if (c := chance_of(data)) is not None
    ]
    if not rows:
        return pd.DataFrame(columns=LEADERBOARD_COLUMNS)
    frame = pd.DataFrame(rows).groupby(["suite", "eval_suite", "family"], sort=False)["value"]
    out = frame.agg(mean="mean", n="count").reset_index()
    return out.assign(algorithm=CHANCE_LABEL, metric="chance")[["suite", "eval_suite", "family", "algorithm",
                                                                "metric", "mean", "n"]]


def _single_attempt(metric: str) -> bool:
    """Metrics a uniform guess scores `chance` on in expectation."""
    return metric in ("pass@1", "em") or metric.startswith("avg@")


def duplicate_metrics(part: pd.DataFrame) -> dict[str, str]:
    """{metric: the earlier metric it equals in every run} (e.g. QA's em = pass@1)."""
    wide = part.pivot_table(index=["family", "algorithm", "seed"], columns="metric", values="value")
    same: dict[str, str] = {}
    ordered = sorted(wide.columns, key=_metric_order)
    for i, metric in enumerate(ordered):
        for earlier in ordered[:i]:
            if earlier not in same and np.allclose(wide[metric], wide[earlier], atol=1e-9, equal_nan=True):
                same[metric] = earlier
                break
    return same


def primary_metrics(metrics: list[str], duplicates: dict[str, str]) -> list[str]:
    """The columns of leaderboard.md: pass@1, the largest pass@k and f1, less duplicates; the
    rest (avg@k, em, ...) are in leaderboard.csv."""
    kept = [m for m in metrics if m not in duplicates]
    pass_k = [m for m in kept if m.startswith("pass@") and m != PRIMARY_METRIC]
    chosen = [m for m in kept if m == PRIMARY_METRIC] + pass_k[-1:] + [m for m in kept if m == "f1"]
    return sorted(chosen or kept, key=_metric_order)


def _estimate_of(row: pd.Series) -> Estimate:
    return Estimate(row["mean"], row["ci_low"], row["ci_high"], int(row["n"]))


def leaderboard_table(board: pd.DataFrame, scores: pd.DataFrame, suite_runs: list[Run], eval_suite: str,
                      reps: int) -> tuple[str, list[str]]:
    """One markdown table (rows = algorithms, columns = model × primary metric), and the notes on
    the columns it leaves to the CSV."""
    part = board[board.eval_suite == eval_suite]
    runs_part = scores[scores.eval_suite == eval_suite]
    families = sorted({r.family for r in suite_runs})
    metrics = sorted(set(part.metric) - {"chance"}, key=_metric_order)
    duplicates = duplicate_metrics(runs_part) if len(runs_part) else {}
    shown = primary_metrics(metrics, duplicates)
    labels = sorted({r.label for r in suite_runs} | set(part.algorithm), key=_algorithm_order)
    bold = {(f, m): supported_best(_rivals(runs_part, f, m), min_runs=MIN_RUNS_FOR_BOLD, reps=reps)
            for f in families for m in shown}
    header = ["algorithm"] + [f"{f} {m}" for f in families for m in shown]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label in labels:
        cells = [_leaderboard_cell(part, label, f, m, bold[f, m] == label) for f in families for m in shown]
        lines.append("| " + " | ".join([label, *cells]) + " |")
    notes = [f"`{m}` equals `{e}` in every run" for m, e in duplicates.items()]
    rest = [m for m in metrics if m not in shown and m not in duplicates]
    if rest or notes:
        notes.append("in leaderboard.csv: " + ", ".join(f"`{m}`" for m in rest + list(duplicates)))
    return "\n".join(lines), notes


def _rivals(runs_part: pd.DataFrame, family: str, metric: str) -> dict[str, np.ndarray]:
    col = runs_part[(runs_part.family == family) & (runs_part.metric == metric) & (runs_part.algorithm != BASE_LABEL)]
    return {a: g["value"].to_numpy() for a, g in col.groupby("algorithm")}


def _leaderboard_cell(part: pd.DataFrame, label: str, family: str, metric: str, bold: bool) -> str:
    fam = part[part.family == family]
    if label == CHANCE_LABEL:
        chance = fam[fam.algorithm == CHANCE_LABEL]
        return f"{chance['mean'].iloc[0]:.3f}" if len(chance) and _single_attempt(metric) else ""
    row = fam[(fam.metric == metric) & (fam.algorithm == label)]
    if row.empty:
        return "—"
    text = _estimate_of(row.iloc[0]).text()
    return f"**{text}**" if bold else text


def _sft_notes(suite_runs: list[Run]) -> str:
    notes = []
    for r in suite_runs:
        sft = read_json(r.path / "sft.json") if r.is_base else None
        if sft and is_number(sft.get("reached_accuracy")):
            target = sft.get("target_accuracy")
            notes.append(f"- base `{r.family}`: SFT warm start reached sampled accuracy "
                         f"{sft['reached_accuracy']:.3f} (target {target}) in {sft.get('steps', '?')} steps")
    return "\n".join(notes)


# ---------------------------------------------------------------- over all tasks


def baseline_of(label: str, runs: list[Run], baseline: str, sweep: str | None) -> str | None:
    """The label `label` is compared with: the baseline algorithm's, at the same swept setting."""
    info = {r.label: r for r in runs if not r.is_base}
    mine = info.get(label)
    if mine is None:
        return None
    matches = [
        other for other, r in info.items()
        if r.algorithm_name == baseline and (sweep is None or r.setting(sweep) == mine.setting(sweep))
    ]
    return matches[0] if len(matches) == 1 else None


def task_matrices(scores: pd.DataFrame, metric: str = PRIMARY_METRIC) -> tuple[dict[str, np.ndarray], list[str]]:
    """{label: runs × tasks} of `metric` on each suite's own eval suite, tasks = suite × model,
    over the seeds every task of that label holds; the task names."""
    own = scores[(scores.eval_suite == scores.suite) & (scores.metric == metric) & (scores.algorithm != BASE_LABEL)]
    tasks = sorted({f"{s}/{f}" for s, f in zip(own.suite, own.family, strict=True)})
    out = {}
    for label, group in own.groupby("algorithm"):
        wide = group.assign(task=group.suite + "/" + group.family).pivot_table(index="seed", columns="task", values="value")
        if list(wide.columns) == tasks:
            complete = wide.dropna()
            if len(complete):
                out[label] = complete.to_numpy()
    return out, tasks


def overall_table(runs: list[Run], scores: pd.DataFrame, baseline: str, sweep: str | None, reps: int) -> str:
    matrices, tasks = task_matrices(scores)
    if not matrices or len(tasks) < 2:
        return ""
    lines = [
        f"## All tasks — {PRIMARY_METRIC} over {len(tasks)} tasks ({', '.join(tasks)})",
        f"Mean and IQM over runs × tasks, tasks resampled too; P(> {baseline}) = probability that a run "
        f"of the row beats a run of `{baseline}`{' at the same ' + sweep if sweep else ''} on a task "
        "(0.5 = no difference), averaged over tasks. Only seeds present in every task count.",
        "",
        f"| algorithm | mean | IQM | P(> {baseline}) | runs × tasks |",
        "|---|---|---|---|---|",
    ]
    for label in sorted(matrices, key=_algorithm_order):
        m = matrices[label]
        ref = baseline_of(label, runs, baseline, sweep)
        versus = "—" if ref is None or ref == label or ref not in matrices else improvement(m, matrices[ref], reps=reps).text()
        lines.append(f"| {label} | {estimate(m, reps=reps).text()} | {estimate(m, 'iqm', reps=reps).text()} | "
                     f"{versus} | {m.shape[0]} × {m.shape[1]} |")
    return "\n".join(lines)


def profile_figure(scores: pd.DataFrame, reps: int) -> bytes | None:
    """Performance profile of pass@1 over all tasks: the fraction of runs scoring above τ."""
    matrices, tasks = task_matrices(scores)
    if not matrices:
        return None
    taus = np.linspace(0.0, 1.0, 41)
    profiles, bands = performance_profile(matrices, taus, reps=reps)
    fig = new_figure(6.4, 4.2)
    ax = fig.subplots()
    for i, label in enumerate(sorted(matrices)):
        color = PALETTE[i % len(PALETTE)]
        ax.plot(taus, profiles[label], color=color, label=label, linewidth=1.5)
        ax.fill_between(taus, bands[label][0], bands[label][1], color=color, alpha=0.15, linewidth=0)
    ax.set(xlabel=f"{PRIMARY_METRIC} τ", ylabel="fraction of runs with score > τ", ylim=(0, 1.02))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncols=2 if len(matrices) > 6 else 1)
    ax.set_title(f"Performance profile over {len(tasks)} tasks (band: 95% stratified bootstrap)", fontsize=10)
    return png_bytes(fig)


def leaderboard_markdown(runs: list[Run], board: pd.DataFrame, scores: pd.DataFrame, header: str, *,
                         baseline: str, sweep: str | None, reps: int) -> str:
    parts = [header, _legend_leaderboard()]
    for suite in sorted({r.suite for r in runs}):
        suite_runs = [r for r in runs if r.suite == suite]
        part = board[board.suite == suite]
        eval_suites = sorted(set(part.eval_suite), key=lambda s: (s != suite, s)) or [suite]
        for es in eval_suites:
            title = f"## {suite}" + ("" if es == suite else f" — evaluated on {es}")
            table, notes = leaderboard_table(part, scores[scores.suite == suite], suite_runs, es, reps)
            parts += [title, table] + ([("Columns: " + "; ".join(notes) + ".")] if notes else [])
        parts.append(_sft_notes(suite_runs))
    parts.append(overall_table(runs, scores, baseline, sweep, reps))
    parts.append(_excluded_notes(runs))
    return "\n\n".join(p for p in parts if p) + "\n"


def _legend_leaderboard() -> str:
    return (
        "Cells: mean over seeds [95% stratified-bootstrap interval] n = runs with an eval file "
        "(rliable; no interval at n = 1; — = none). **Bold**: the highest mean of a column among "
        f"the RL algorithms, only when both it and the runner-up have ≥ {MIN_RUNS_FOR_BOLD} runs and "
        "the 95% interval of P(best > runner-up) lies above 0.5; a tie or a lead inside the noise "
        "is not bold. The base row is one checkpoint, evaluated once. Collapsed runs count with "
        f"their final checkpoint. `{CHANCE_LABEL}`: the expected score of a uniform guess among the "
        "candidate answers, shown under single-attempt metrics. Std and IQM of every cell: leaderboard.csv."
    )


def _excluded_notes(runs: list[Run]) -> str:
    lines = []
    for state, title in (("incomplete", "Incomplete runs"), ("failed", "Failed runs")):
        bad = [r for r in runs if r.state == state]
        if bad:
            lines.append(f"**{title} (excluded from all means):**")
            lines += [f"- `{r.name}`: {_state_text(r)}" for r in bad]
    return "\n".join(lines)


def _state_text(run: Run) -> str:
    if run.status is None:
        return "no status.json"
    state, reason = run.status.get("state"), run.status.get("reason")
    return f"{state} at step {run.status.get('step', '?')}" + (f" ({reason})" if reason else "")


# ---------------------------------------------------------------- stability


def _edge_ratio(values: pd.Series) -> float:
    """Mean of the last EDGE values over the mean of the first EDGE."""
    if values.empty:
        return math.nan
    first, last = values.head(EDGE).mean(), values.tail(EDGE).mean()
    return last / first if first else math.nan


def reason_label(reason: str | None) -> str:
    """'entropy collapse: entropy 0.01 (initial ...' -> 'entropy collapse'."""
    label = (reason or "unknown").split(":")[0].strip()
    return re.sub(r" on \d+ consecutive steps$", "", label) or "unknown"


def run_stability(run: Run) -> dict:
    """Per-run numbers the stability table averages."""
    m = run.metrics
    reward, grad = series(m, "rollout/reward_mean"), series(m, "actor/grad_norm")
    collapsed = run.state == "collapsed"
    return {
        "entropy_ratio": _edge_ratio(series(m, "actor/entropy")),
        "grad_norm_max": grad.max() if len(grad) else math.nan,
        "reward_peak": reward.max() if len(reward) else math.nan,
        "reward_final": reward.tail(EDGE).mean() if len(reward) else math.nan,
        "steps_to_collapse": float(run.status.get("step", math.nan)) if collapsed else math.nan,
    }


def collapse_rate_text(collapsed: int, runs: int, reasons: list[str]) -> str:
    if runs == 0:
        return "—"
    counts = pd.Series(reasons, dtype=object).value_counts(sort=False)
    detail = ", ".join(f"{label} ×{n}" for label, n in counts.items())
    return f"{collapsed}/{runs}" + (f" ({detail})" if detail else "")


def stability_row(suite: str, family: str, algorithm: str, group: list[Run], reps: int = REPS) -> dict:
    done = [r for r in group if r.state in FINISHED]
    reasons = [reason_label(r.status.get("reason")) for r in done if r.state == "collapsed"]
    per_run = pd.DataFrame([run_stability(r) for r in done], columns=PER_RUN)
    steps = pd.concat([r.metrics for r in done], ignore_index=True) if done else pd.DataFrame()
    rate = wilson(len(reasons), len(done))
    row = {
        "suite": suite, "family": family, "algorithm": algorithm, "runs": len(done),
        "collapsed": len(reasons), "collapse_rate": rate.point, "collapse_rate_low": rate.low,
        "collapse_rate_high": rate.high,
        "collapse_reasons": collapse_rate_text(len(reasons), len(done), reasons),
        "failed": sum(r.state == "failed" for r in group),
        "incomplete": sum(r.state == "incomplete" for r in group),
    }
    for k in PER_RUN:
        est = estimate(per_run[k].dropna().to_numpy(), reps=reps)
        row |= est.columns(k)
    row.update({k: series(steps, f"taxonomy/{k}").mean() for k in TAXONOMY})
    return row


def stability_frame(runs: list[Run], reps: int = REPS) -> pd.DataFrame:
    """Pooled rows (family 'all') and per-family rows for every suite × algorithm."""
    trained = [r for r in runs if not r.is_base]
    rows = []
    for suite in sorted({r.suite for r in trained}):
        for algorithm in sorted({r.algorithm for r in trained if r.suite == suite}):
            group = [r for r in trained if (r.suite, r.algorithm) == (suite, algorithm)]
            rows.append(stability_row(suite, "all", algorithm, group, reps))
            for family in sorted({r.family for r in group}):
                rows.append(stability_row(suite, family, algorithm, [r for r in group if r.family == family], reps))
    return pd.DataFrame(rows, columns=STABILITY_COLUMNS)


def _num(value: float, digits: int = 3) -> str:
    return "—" if pd.isna(value) else f"{value:.{digits}f}"


def stability_tables(pooled: pd.DataFrame) -> list[str]:
    """Two markdown tables for one suite: collapse/entropy/reward, and the token taxonomy."""
    head = "| algorithm | runs | collapse rate | collapse 95% | steps to collapse | entropy final/initial | max grad norm | reward peak | reward final |"
    main = [head, "|" + "---|" * 9]
    tax = ["| algorithm | " + " | ".join(TAXONOMY) + " |", "|" + "---|" * (1 + len(TAXONOMY))]
    for _, r in pooled.iterrows():
        band = "—" if pd.isna(r.collapse_rate_low) else f"[{r.collapse_rate_low:.2f}, {r.collapse_rate_high:.2f}]"
        per_run = [Estimate.from_columns(r, k).text(1 if k == "steps_to_collapse" else 3) for k in PER_RUN]
        main.append("| " + " | ".join([r.algorithm, str(r.runs), r.collapse_reasons, band, *per_run]) + " |")
        tax.append(f"| {r.algorithm} | " + " | ".join(_num(r[k]) for k in TAXONOMY) + " |")
    return ["\n".join(main), "Token taxonomy (mean over all steps of all runs):", "\n".join(tax)]


def stability_markdown(runs: list[Run], table: pd.DataFrame, header: str) -> str:
    parts = [header, _legend_stability()]
    for suite in sorted(set(table.suite)):
        pooled = table[(table.suite == suite) & (table.family == "all")]
        parts += [f"## {suite}", *stability_tables(pooled)]
    parts.append(_excluded_notes(runs))
    return "\n\n".join(p for p in parts if p) + "\n"


def _legend_stability() -> str:
    return (
        f"Pooled over models and seeds (per-model rows in stability.csv). runs = completed + "
        f"collapsed runs; collapse rate = collapsed / runs with the detector's reasons, and its 95% "
        f"Wilson interval. Other cells: mean over runs [95% bootstrap interval] n. entropy "
        f"final/initial = mean of the last {EDGE} steps over the mean of the first {EDGE}; max grad "
        f"norm = per-run maximum; reward peak / final = per-run maximum / mean of the last {EDGE} "
        f"steps; steps to collapse = over collapsed runs (— if none)."
    )


def collapse_thresholds(runs: list[Run]) -> list[str]:
    """Distinct `collapse:` sections of the runs' resolved configs, as one line each."""
    seen: dict[str, int] = {}
    for r in runs:
        section = read_yaml(r.path / "config.yaml").get("collapse")
        if isinstance(section, dict):
            text = ", ".join(f"{k} {v}" for k, v in section.items())
            seen[text] = seen.get(text, 0) + 1
    if len(seen) == 1:
        return [f"Collapse thresholds (config.yaml `collapse:`): {next(iter(seen))}."]
    return [f"Collapse thresholds in {n} runs: {text}." for text, n in seen.items()]


# ---------------------------------------------------------------- figures


def _curve_stats(group: list[Run], key: str) -> pd.DataFrame:
    """Per step: mean, min and max over the runs that logged `key` at that step."""
    cols = {i: r.metrics.set_index("step")[key] for i, r in enumerate(group) if key in r.metrics}
    if not cols:
        return pd.DataFrame(columns=["mean", "min", "max"])
    wide = pd.DataFrame(cols).apply(pd.to_numeric, errors="coerce")
    return pd.DataFrame({"mean": wide.mean(axis=1), "min": wide.min(axis=1), "max": wide.max(axis=1)}).sort_index()


def _plot_family(ax, runs: list[Run], key: str, colors: dict[str, str]) -> None:
    for algorithm in sorted({r.algorithm for r in runs}):
        group = [r for r in runs if r.algorithm == algorithm]
        stats = _curve_stats(group, key)
        if stats.empty:
            continue
        color = colors[algorithm]
        ax.plot(stats.index, stats["mean"], color=color, label=algorithm, linewidth=1.5)
        ax.fill_between(stats.index, stats["min"], stats["max"], color=color, alpha=0.2, linewidth=0)
        for r in (r for r in group if r.state == "collapsed" and key in r.metrics):
            hit = r.metrics[r.metrics.step == r.status.get("step")]
            ax.plot(hit.step, hit[key], "x", color=color, markersize=7)


def curve_figure(suite_runs: list[Run], suite: str, name: str, colors: dict[str, str]) -> bytes:
    key, ylabel = CURVES[name]
    families = sorted({r.family for r in suite_runs})
    ncols = min(len(families), 3)
    nrows = math.ceil(len(families) / ncols)
    fig = new_figure(4.5 * ncols, 3.4 * nrows + 0.8)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    values = pd.concat([series(r.metrics, key) for r in suite_runs])
    log_scale = name == "grad_norm" and len(values) and bool((values > 0).all())
    for ax, family in zip(axes[: len(families)], families, strict=True):
        _plot_family(ax, [r for r in suite_runs if r.family == family], key, colors)
        ax.set(title=family, xlabel="step", ylabel=ylabel, yscale="log" if log_scale else "linear")
        ax.grid(alpha=0.3)
    for ax in axes[len(families):]:
        ax.set_visible(False)
    handles = {h.get_label(): h for ax in axes for h in ax.get_legend_handles_labels()[0]}
    if handles:
        fig.legend(list(handles.values()), list(handles), loc="outside lower center", ncols=min(len(handles), 6))
    fig.suptitle(f"{suite}: {ylabel} — mean over seeds, band = min–max, × = collapse")
    return png_bytes(fig)


def write_figures(runs: list[Run]) -> dict[str, bytes]:
    """{figures/<suite>_<curve>.png: PNG} for every suite that has finished runs with metrics."""
    finished = [r for r in runs if r.state in FINISHED and len(r.metrics)]
    names = sorted({r.algorithm for r in runs if not r.is_base})
    colors = colors_for(names)
    written = {}
    for suite in sorted({r.suite for r in finished}):
        for name in CURVES:
            written[f"figures/{suite}_{name}.png"] = curve_figure([r for r in finished if r.suite == suite], suite, name, colors)
    return written


# ---------------------------------------------------------------- entry point


def git_commit() -> str:
    """Short commit of the code producing the tables, or 'unknown'."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"


def make_header(title: str, experiment: str, command: str, config_name: str, extra: list[str] = ()) -> str:
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    lines = [
        f"# {title} — experiment `{experiment}`",
        "",
        f"Generated by `{command}` from config `{config_name}` at commit `{git_commit()}`, {now}.",
        *extra,
    ]
    return "\n".join(lines)


def _sorted_board(board: pd.DataFrame) -> pd.DataFrame:
    def key(col: pd.Series) -> pd.Series:
        order = {"algorithm": _algorithm_order, "metric": _metric_order}.get(col.name)
        return col.map(order) if order else col

    return board.sort_values(KEYS, key=key, kind="stable")


def provenance_lines(runs: list[Run]) -> list[str]:
    """What the runs were made with, from their provenance.json and status.json: package
    versions, devices, training precision, commits, and the summed wall time."""
    trained = [r for r in runs if not r.is_base and r.provenance]
    if not trained:
        return []

    def distinct(values) -> str:
        counts = Counter(values)
        if len(counts) == 1:
            return str(next(iter(counts)))
        return " / ".join(f"{v} ({n} runs)" for v, n in counts.most_common())

    versions = ", ".join(
        f"{k} {distinct(r.provenance.get('versions', {}).get(k) or 'not installed' for r in trained)}"
        for k in VERSION_KEYS
    )
    devices = distinct(_device_text(r.provenance.get("device") or {}) for r in trained)
    precision = distinct(
        ((r.provenance.get("precision") or {}).get("train.precision") or {}).get("used", "?") for r in trained
    )
    commits = distinct(str(r.provenance.get("commit", "unknown"))[:12] for r in trained)
    train_s = sum(w for r in runs if not r.is_base and not math.isnan(w := r.wall_s()))
    sft_s = sum(w for r in runs if r.is_base and not math.isnan(w := r.wall_s()))
    eval_s = sum(d["seconds"] for r in runs for d in r.evals.values() if is_number(d.get("seconds")))
    return [
        "",
        f"Runs made with {versions}; device {devices}; training precision {precision}; "
        f"run commits {commits}. Wall time, summed over jobs: training {train_s / 60:.1f} min "
        f"({len(trained)} runs), SFT of the bases {sft_s / 60:.1f} min, lm-eval scoring "
        f"{eval_s / 60:.1f} min (model loading and process start-up not included).",
    ]


def _device_text(device: dict) -> str:
    if device.get("kind") == "cpu":
        flags = ", ".join(device.get("bf16_flags") or []) or "no native bf16"
        return f"{device.get('name', 'CPU')} ({device.get('torch_capability', '?')}; {flags})"
    return str(device.get("name") or device.get("kind") or "unknown")


def aggregate(
    runs_root: Path, out_dir: Path = Path("results"), *, command: str, config_name: str,
    experiment: str | None = None, manifest: Path | None = None, sweep: str | None = None,
    baseline: str = "grpo", reps: int = REPS,
) -> dict[str, Path]:
    """Write leaderboard.{md,csv}, stability.{md,csv} and figures/*.png for one experiment (with
    `sweep`, a run-config field such as train.lr, also the stress tables of rlvr/stress.py; where
    runs hold learning curves, the scaling fits of rlvr/curves.py), and optionally a JSON manifest
    of what was aggregated (run, state, eval files) at `manifest`.

    Returns {name relative to out_dir: path} of every file written. Raises ValueError (one line,
    naming runs_root) when there are no runs at all."""
    runs_root, out_dir = Path(runs_root), Path(out_dir)
    root = experiment_dir(runs_root, experiment)
    runs = discover_runs(root) if root.is_dir() else []
    if not runs:
        where = root if experiment else runs_root
        raise ValueError(f"no runs found under {where} (expected <suite>/<family>/<algorithm>/seed<N>/)")
    name = experiment or root.name
    scores = score_frame(runs)
    board, stability = leaderboard_frame(runs, scores, reps), stability_frame(runs, reps)
    made_with = provenance_lines(runs)
    header = make_header("Leaderboard", name, command, config_name, made_with)
    stab_header = make_header("Stability", name, command, config_name, [*made_with, "", *collapse_thresholds(runs)])
    texts = {
        "leaderboard.md": leaderboard_markdown(runs, board, scores, header, baseline=baseline, sweep=sweep, reps=reps),
        "leaderboard.csv": csv_text(_sorted_board(board)),
        "stability.md": stability_markdown(runs, stability, stab_header),
        "stability.csv": csv_text(stability),
    }
    figures = write_figures(runs)
    if (profile := profile_figure(scores, reps)) is not None:
        figures["figures/performance_profile.png"] = profile
    if sweep:
        tables, pictures = stress.report(runs, sweep, make_header("Stress", name, command, config_name, made_with),
                                         baseline=baseline, reps=reps)
        texts |= tables
        figures |= pictures
    tables, pictures = curves.report(runs, make_header("Scaling", name, command, config_name, made_with), reps=reps)
    texts |= tables
    figures |= pictures
    written = {}
    for rel, text in texts.items():
        atomic_write_text(out_dir / rel, text)
        written[rel] = out_dir / rel
    for rel, png in figures.items():
        atomic_write_bytes(out_dir / rel, png)
        written[rel] = out_dir / rel
    if manifest is not None:
        atomic_write_text(manifest, json.dumps({
            "experiment": name, "command": command, "config": config_name, "commit": git_commit(),
            "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "runs": {r.name: {"state": r.state, "evals": sorted(r.evals)} for r in runs},
            "files": sorted(str(p) for p in written.values()),
        }, indent=1) + "\n")
    return written
