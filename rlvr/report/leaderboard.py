"""The leaderboard: eval metrics per suite, algorithms (base first) × model × metric.

leaderboard.md holds, per suite and eval suite, the mean of each primary metric with its 95%
stratified-bootstrap interval and n (rlvr/report/intervals.py), bold only for a lead the intervals
support, then an "all tasks" table (mean, IQM, probability of improvement over the baseline
algorithm); leaderboard.csv every metric with std and IQM; the performance profile figure pass@1
over all tasks.

Runs whose status is `running` or missing are *incomplete*; `failed` runs are listed with their
reason. Both are excluded from every mean; collapsed runs are included (they are an outcome).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from rlvr.io import csv_text
from rlvr.report import Options
from rlvr.report.header import Header
from rlvr.report.intervals import (
    REPS,
    Estimate,
    estimate,
    improvement,
    performance_profile,
    supported_best,
)
from rlvr.report.plots import PALETTE, new_figure, png_bytes
from rlvr.report.runs import (
    BASE_LABEL,
    FINISHED,
    PRIMARY_METRIC,
    Run,
    eval_scores,
    excluded_notes,
    is_number,
    read_json,
)

CHANCE_LABEL = "chance level"
KEYS = ["suite", "eval_suite", "family", "algorithm", "metric"]
LEADERBOARD_COLUMNS = [*KEYS, "mean", "ci_low", "ci_high", "std", "iqm", "iqm_low", "iqm_high", "n"]
MIN_RUNS_FOR_BOLD = 3  # below it a full separation happens by chance too often (1 in 6 at 2 vs 2)


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
    parts.append(excluded_notes(runs))
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


def _sorted_board(board: pd.DataFrame) -> pd.DataFrame:
    def key(col: pd.Series) -> pd.Series:
        order = {"algorithm": _algorithm_order, "metric": _metric_order}.get(col.name)
        return col.map(order) if order else col

    return board.sort_values(KEYS, key=key, kind="stable")



def write(runs: list[Run], header: Header, options: Options) -> dict[str, str | bytes]:
    """The markdown and CSV tables, and the performance profile where runs have tasks to profile."""
    scores = score_frame(runs)
    board = leaderboard_frame(runs, scores, options.reps)
    files: dict[str, str | bytes] = {
        "markdown": leaderboard_markdown(runs, board, scores, header.text("Leaderboard"), baseline=options.baseline,
                                         sweep=options.sweep, reps=options.reps),
        "csv": csv_text(_sorted_board(board)),
    }
    if (profile := profile_figure(scores, options.reps)) is not None:
        files["profile"] = profile
    return files
