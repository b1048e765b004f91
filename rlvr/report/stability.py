"""Training stability: how runs behaved while they trained, per suite × algorithm.

stability.md (pooled over models and seeds; per-model rows in stability.csv): the collapse rate
with its Wilson interval and the detector's reasons, steps to collapse, entropy final/initial,
max grad norm, reward peak and final with bootstrap intervals, and the token-taxonomy fractions;
and per suite, the training curves (entropy, reward, grad norm) of every algorithm, one panel per
model: mean over seeds, band = min–max, × = a collapse.
"""

from __future__ import annotations

import math
import re

import pandas as pd

from rlvr.io import csv_text
from rlvr.report import Options
from rlvr.report.header import Header
from rlvr.report.intervals import REPS, Estimate, estimate, wilson
from rlvr.report.plots import colors_for, new_figure, png_bytes
from rlvr.report.runs import (
    EDGE,
    FINISHED,
    TAXONOMY_BINS,
    Run,
    excluded_notes,
    read_yaml,
    series,
)

CURVES = {  # training-curve figure (its output key) -> (metrics key, axis label)
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
    parts.append(excluded_notes(runs))
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



# ---------------------------------------------------------------- training curves


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


def curve_figures(runs: list[Run]) -> dict[tuple[str, str], bytes]:
    """{(curve, suite): PNG} for every suite that has finished runs with metrics."""
    finished = [r for r in runs if r.state in FINISHED and len(r.metrics)]
    names = sorted({r.algorithm for r in runs if not r.is_base})
    colors = colors_for(names)
    figures = {}
    for suite in sorted({r.suite for r in finished}):
        for name in CURVES:
            figures[name, suite] = curve_figure([r for r in finished if r.suite == suite], suite, name, colors)
    return figures


def write(runs: list[Run], header: Header, options: Options) -> dict:
    """The markdown and CSV tables, and the training curves of every suite."""
    table = stability_frame(runs, options.reps)
    files: dict = {
        "markdown": stability_markdown(runs, table, header.text("Stability", "", *collapse_thresholds(runs))),
        "csv": csv_text(table),
    }
    return files | curve_figures(runs)
