"""Aggregate one experiment's runs into results/: leaderboard, stability table, training curves.

Reads (see DESIGN.md)
    runs/<experiment>/<suite>/<family>/<algorithm>/seed<N>/   config.yaml, metrics.jsonl,
                                                              status.json, eval/<eval_suite>.json
    runs/<experiment>/<suite>/<family>/base/                  sft.json, eval/<eval_suite>.json
and writes, each file atomically,
    leaderboard.md / .csv   eval metrics per suite: algorithms (base first) × family × metric,
                            mean ± sample std over seeds; best non-base mean per column in bold
    stability.md / .csv     collapse rate and reasons, entropy final/initial, max grad norm,
                            reward peak/final, steps to collapse, token-taxonomy fractions
    figures/<suite>_{entropy,reward,grad_norm}.png
                            one subplot per family, one line per algorithm (mean over seeds,
                            band = min–max over seeds, × = a run's collapse step)

Runs whose status is `running` or missing are *incomplete*; `failed` runs are listed with their
reason. Both are excluded from every mean; collapsed runs are included (they are an outcome).
"""

from __future__ import annotations

import io
import json
import math
import re
import subprocess
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path

import pandas as pd
import yaml
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from rlvr.io import atomic_write_bytes, atomic_write_text

BASE = "base"
BASE_LABEL = "base (before RL)"
CHANCE_LABEL = "chance level"
FINISHED = ("completed", "collapsed")
EDGE = 3  # steps averaged for the "initial" and "final" values
SEED_DIR = re.compile(r"seed(\d+)")
CURVES = {  # figure name -> (metrics key, axis label)
    "entropy": ("actor/entropy", "token entropy"),
    "reward": ("rollout/reward_mean", "mean reward"),
    "grad_norm": ("actor/grad_norm", "gradient norm (before clipping)"),
}
BINS = ("pos_peak", "pos_valley", "neg_peak", "neg_valley")
TAXONOMY = [f"{b}_frac" for b in BINS] + [f"{b}_grad_mass" for b in BINS]
PER_RUN = ["steps_to_collapse", "entropy_ratio", "grad_norm_max", "reward_peak", "reward_final"]
STABILITY_COLUMNS = [
    "suite", "family", "algorithm", "runs", "collapsed", "collapse_rate", "collapse_reasons",
    "failed", "incomplete", *PER_RUN, *TAXONOMY,
]
LEADERBOARD_COLUMNS = ["suite", "eval_suite", "family", "algorithm", "metric", "mean", "std", "n"]


# ---------------------------------------------------------------- reading the runs tree


@dataclass
class Run:
    """One run directory (or a family's base model, seed None) and what it holds."""

    suite: str
    family: str
    algorithm: str
    seed: int | None
    path: Path
    status: dict | None = field(default=None, repr=False)
    evals: dict[str, dict] = field(default_factory=dict, repr=False)

    @property
    def is_base(self) -> bool:
        return self.seed is None

    @property
    def label(self) -> str:
        return BASE_LABEL if self.is_base else self.algorithm

    @property
    def state(self) -> str:
        """completed | collapsed | failed | incomplete (running, missing or unreadable status)."""
        if self.is_base:
            return "base"
        state = (self.status or {}).get("state")
        return state if state in (*FINISHED, "failed") else "incomplete"

    @property
    def name(self) -> str:
        return "/".join([self.suite, self.family, self.algorithm] + ([] if self.is_base else [f"seed{self.seed}"]))

    @cached_property
    def metrics(self) -> pd.DataFrame:
        return read_metrics(self.path / "metrics.jsonl")


def _read_json(path: Path) -> dict | None:
    """A JSON object, or None when the file is missing, half-written or not an object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def read_metrics(path: Path) -> pd.DataFrame:
    """metrics.jsonl as a frame sorted by step; lines a killed job cut short are skipped."""
    rows = []
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict) and "step" in row:
                rows.append(row)
    frame = pd.DataFrame(rows)
    if frame.empty:
        return pd.DataFrame({"step": pd.Series(dtype=float)})
    return frame.drop_duplicates("step", keep="last").sort_values("step").reset_index(drop=True)


def _load_run(root: Path, path: Path, seed: int | None) -> Run:
    suite, family, algorithm = path.relative_to(root).parts[:3]
    evals = {f.stem: d for f in sorted((path / "eval").glob("*.json")) if (d := _read_json(f))}
    return Run(suite, family, algorithm, seed, path, _read_json(path / "status.json"), evals)


def _visible(path: Path, root: Path) -> bool:
    return path.is_dir() and not any(p.startswith(".") for p in path.relative_to(root).parts)


def discover_runs(root: Path) -> list[Run]:
    """Every seed directory and base model under an experiment directory, in a stable order."""
    runs = []
    for path in sorted(root.glob("*/*/*/seed*")):
        match = SEED_DIR.fullmatch(path.name)
        if match and path.parent.name != BASE and _visible(path, root):
            runs.append(_load_run(root, path, int(match.group(1))))
    runs += [_load_run(root, p, None) for p in sorted(root.glob(f"*/*/{BASE}")) if _visible(p, root)]
    return sorted(runs, key=lambda r: (r.suite, r.family, not r.is_base, r.algorithm, r.seed or 0))


def _is_experiment(path: Path) -> bool:
    return any(path.glob("*/*/*/seed*")) or any(path.glob(f"*/*/{BASE}"))


def experiment_dir(runs_root: Path, experiment: str | None) -> Path:
    """runs_root/experiment; or runs_root itself when it is an experiment; or its only experiment."""
    if experiment is not None:
        return runs_root / experiment
    if not runs_root.is_dir() or _is_experiment(runs_root):
        return runs_root
    found = sorted(p for p in runs_root.iterdir() if p.is_dir() and _is_experiment(p))
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise ValueError(f"{runs_root} holds several experiments ({names}); pass experiment=NAME")
    return found[0] if found else runs_root


# ---------------------------------------------------------------- leaderboard


def eval_scores(data: dict) -> dict[str, float]:
    """The numeric entries of an eval JSON's `metrics` (e.g. pass@1, avg@4, pass@4, em, f1)."""
    out = {}
    for key, value in (data.get("metrics") or {}).items():
        if isinstance(value, dict):  # tolerate {"value": x, "stderr": y}
            value = value.get("value", value.get("mean"))
        if key != "chance" and "stderr" not in key and _is_number(value):
            out[key] = float(value)
    return out


def chance_of(data: dict) -> float | None:
    value = data.get("chance", (data.get("metrics") or {}).get("chance"))
    return float(value) if _is_number(value) else None


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _metric_order(metric: str) -> tuple:
    """pass@1, avg@k, pass@k, em, f1, then anything else alphabetically."""
    kind, _, k = metric.partition("@")
    rank = {"pass": 0 if k == "1" else 2, "avg": 1, "em": 3, "f1": 4}.get(kind, 5)
    return (rank, int(k) if k.isdigit() else 0, metric)


def _algorithm_order(label: str) -> tuple:
    return ({BASE_LABEL: 0, CHANCE_LABEL: 1}.get(label, 2), label)


def leaderboard_frame(runs: list[Run]) -> pd.DataFrame:
    """Tidy table: one row per suite × eval suite × family × algorithm × metric."""
    used = [r for r in runs if r.is_base or r.state in FINISHED]
    rows = [
        {"suite": r.suite, "eval_suite": es, "family": r.family, "algorithm": r.label, "metric": m, "value": v}
        for r in used for es, data in r.evals.items() for m, v in eval_scores(data).items()
    ]
    scores = pd.DataFrame(rows, columns=[*LEADERBOARD_COLUMNS[:5], "value"])
    keys = LEADERBOARD_COLUMNS[:5]
    table = scores.groupby(keys, sort=False)["value"].agg(mean="mean", std="std", n="count").reset_index()
    return pd.concat([table, _chance_rows(used)], ignore_index=True) if len(table) else table


def _chance_rows(runs: list[Run]) -> pd.DataFrame:
    rows = [
        {"suite": r.suite, "eval_suite": es, "family": r.family, "value": c}
        for r in runs for es, data in r.evals.items() if (c := chance_of(data)) is not None
    ]
    if not rows:
        return pd.DataFrame(columns=LEADERBOARD_COLUMNS)
    frame = pd.DataFrame(rows).groupby(["suite", "eval_suite", "family"], sort=False)["value"]
    out = frame.agg(mean="mean", n="count").reset_index()
    return out.assign(algorithm=CHANCE_LABEL, metric="chance", std=math.nan)[LEADERBOARD_COLUMNS]


def _cell(mean: float, std: float, n: int) -> str:
    spread = "" if pd.isna(std) else f" ± {std:.3f}"
    return f"{mean:.3f}{spread} (n={n})"


def _single_attempt(metric: str) -> bool:
    """Metrics a uniform guess scores `chance` on in expectation."""
    return metric in ("pass@1", "em") or metric.startswith("avg@")


def leaderboard_table(board: pd.DataFrame, suite_runs: list[Run], eval_suite: str) -> str:
    """One markdown table: rows = algorithms, columns = family × metric, best in bold."""
    part = board[board.eval_suite == eval_suite]
    families = sorted({r.family for r in suite_runs})
    metrics = sorted(set(part.metric) - {"chance"}, key=_metric_order)
    labels = sorted({r.label for r in suite_runs} | set(part.algorithm), key=_algorithm_order)
    header = ["algorithm"] + [f"{f} {m}" for f in families for m in metrics]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label in labels:
        cells = [_leaderboard_cell(part, label, f, m) for f in families for m in metrics]
        lines.append("| " + " | ".join([label, *cells]) + " |")
    return "\n".join(lines)


def _leaderboard_cell(part: pd.DataFrame, label: str, family: str, metric: str) -> str:
    fam = part[part.family == family]
    if label == CHANCE_LABEL:
        chance = fam[fam.algorithm == CHANCE_LABEL]
        return f"{chance['mean'].iloc[0]:.3f}" if len(chance) and _single_attempt(metric) else ""
    col = fam[fam.metric == metric]
    row = col[col.algorithm == label]
    if row.empty:
        return "—"
    mean, std, n = row.iloc[0][["mean", "std", "n"]]
    text = _cell(mean, std, int(n))
    rivals = col[~col.algorithm.isin([BASE_LABEL, CHANCE_LABEL])]["mean"]
    best = label != BASE_LABEL and len(rivals) and mean == rivals.max()
    return f"**{text}**" if best else text


def _sft_notes(suite_runs: list[Run]) -> str:
    notes = []
    for r in suite_runs:
        sft = _read_json(r.path / "sft.json") if r.is_base else None
        if sft and _is_number(sft.get("reached_accuracy")):
            target = sft.get("target_accuracy")
            notes.append(f"- base `{r.family}`: SFT warm start reached sampled accuracy "
                         f"{sft['reached_accuracy']:.3f} (target {target}) in {sft.get('steps', '?')} steps")
    return "\n".join(notes)


def leaderboard_markdown(runs: list[Run], board: pd.DataFrame, header: str) -> str:
    parts = [header, _legend_leaderboard()]
    for suite in sorted({r.suite for r in runs}):
        suite_runs = [r for r in runs if r.suite == suite]
        part = board[board.suite == suite]
        eval_suites = sorted(set(part.eval_suite), key=lambda s: (s != suite, s)) or [suite]
        for es in eval_suites:
            title = f"## {suite}" + ("" if es == suite else f" — evaluated on {es}")
            parts += [title, leaderboard_table(part, suite_runs, es)]
        parts.append(_sft_notes(suite_runs))
    parts.append(_excluded_notes(runs))
    return "\n\n".join(p for p in parts if p) + "\n"


def _legend_leaderboard() -> str:
    return (
        "Cells: mean ± sample std over seeds (n = runs with an eval file; — = none). "
        "The best mean per column among the RL algorithms is in **bold** (the base row is "
        "excluded). Collapsed runs count with their final checkpoint. "
        f"`{CHANCE_LABEL}`: the expected score of a uniform guess among the candidate answers, "
        "shown under single-attempt metrics."
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


def _series(frame: pd.DataFrame, key: str) -> pd.Series:
    if key not in frame:
        return pd.Series(dtype=float)
    return pd.to_numeric(frame[key], errors="coerce").dropna()


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
    reward, grad = _series(m, "rollout/reward_mean"), _series(m, "actor/grad_norm")
    collapsed = run.state == "collapsed"
    return {
        "entropy_ratio": _edge_ratio(_series(m, "actor/entropy")),
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


def stability_row(suite: str, family: str, algorithm: str, group: list[Run]) -> dict:
    done = [r for r in group if r.state in FINISHED]
    reasons = [reason_label(r.status.get("reason")) for r in done if r.state == "collapsed"]
    per_run = pd.DataFrame([run_stability(r) for r in done], columns=PER_RUN)
    steps = pd.concat([r.metrics for r in done], ignore_index=True) if done else pd.DataFrame()
    row = {
        "suite": suite, "family": family, "algorithm": algorithm, "runs": len(done),
        "collapsed": len(reasons), "collapse_rate": len(reasons) / len(done) if done else math.nan,
        "collapse_reasons": collapse_rate_text(len(reasons), len(done), reasons),
        "failed": sum(r.state == "failed" for r in group),
        "incomplete": sum(r.state == "incomplete" for r in group),
    }
    row.update({k: per_run[k].mean() for k in PER_RUN})
    row.update({k: _series(steps, f"taxonomy/{k}").mean() for k in TAXONOMY})
    return row


def stability_frame(runs: list[Run]) -> pd.DataFrame:
    """Pooled rows (family 'all') and per-family rows for every suite × algorithm."""
    trained = [r for r in runs if not r.is_base]
    rows = []
    for suite in sorted({r.suite for r in trained}):
        for algorithm in sorted({r.algorithm for r in trained if r.suite == suite}):
            group = [r for r in trained if (r.suite, r.algorithm) == (suite, algorithm)]
            rows.append(stability_row(suite, "all", algorithm, group))
            for family in sorted({r.family for r in group}):
                rows.append(stability_row(suite, family, algorithm, [r for r in group if r.family == family]))
    return pd.DataFrame(rows, columns=STABILITY_COLUMNS)


def _num(value: float, digits: int = 3) -> str:
    return "—" if pd.isna(value) else f"{value:.{digits}f}"


def stability_tables(pooled: pd.DataFrame) -> list[str]:
    """Two markdown tables for one suite: collapse/entropy/reward, and the token taxonomy."""
    head = "| algorithm | runs | collapse rate | steps to collapse | entropy final/initial | max grad norm | reward peak | reward final |"
    main = [head, "|" + "---|" * 8]
    tax = ["| algorithm | " + " | ".join(TAXONOMY) + " |", "|" + "---|" * (1 + len(TAXONOMY))]
    for _, r in pooled.iterrows():
        main.append(f"| {r.algorithm} | {r.runs} | {r.collapse_reasons} | {_num(r.steps_to_collapse, 1)} | "
                    f"{_num(r.entropy_ratio)} | {_num(r.grad_norm_max)} | {_num(r.reward_peak)} | {_num(r.reward_final)} |")
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
        f"Pooled over families and seeds (per-family rows in stability.csv). runs = completed + "
        f"collapsed runs; collapse rate = collapsed / runs with the detector's reasons. "
        f"entropy final/initial = mean of the last {EDGE} steps over the mean of the first {EDGE}, "
        f"averaged over runs; max grad norm = per-run maximum, averaged; reward peak / final = "
        f"per-run maximum / mean of the last {EDGE} steps, averaged; steps to collapse = mean "
        f"over collapsed runs (— if none)."
    )


def collapse_thresholds(runs: list[Run]) -> list[str]:
    """Distinct `collapse:` sections of the runs' resolved configs, as one line each."""
    seen: dict[str, int] = {}
    for r in runs:
        try:
            cfg = yaml.safe_load((r.path / "config.yaml").read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError):
            continue
        section = cfg.get("collapse") if isinstance(cfg, dict) else None
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
    fig = Figure(figsize=(4.5 * ncols, 3.4 * nrows + 0.8), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    values = pd.concat([_series(r.metrics, key) for r in suite_runs])
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
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def write_figures(runs: list[Run], out_dir: Path) -> dict[str, Path]:
    """figures/<suite>_<curve>.png for every suite that has finished runs with metrics."""
    finished = [r for r in runs if r.state in FINISHED and len(r.metrics)]
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]
    names = sorted({r.algorithm for r in runs if not r.is_base})
    colors = {a: palette[i % len(palette)] for i, a in enumerate(names)}
    written = {}
    for suite in sorted({r.suite for r in finished}):
        for name in CURVES:
            rel = f"figures/{suite}_{name}.png"
            png = curve_figure([r for r in finished if r.suite == suite], suite, name, colors)
            atomic_write_bytes(out_dir / rel, png)
            written[rel] = out_dir / rel
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

    return board.sort_values(LEADERBOARD_COLUMNS[:5], key=key, kind="stable")


def _csv(frame: pd.DataFrame) -> str:
    return frame.to_csv(index=False, float_format="%.6g", lineterminator="\n")


def aggregate(
    runs_root: Path, out_dir: Path = Path("results"), *, command: str, config_name: str,
    experiment: str | None = None, manifest: Path | None = None,
) -> dict[str, Path]:
    """Write leaderboard.{md,csv}, stability.{md,csv} and figures/*.png for one experiment, and
    optionally a JSON manifest of what was aggregated (run, state, eval files) at `manifest`.

    Returns {name relative to out_dir: path} of every file written. Raises ValueError (one line,
    naming runs_root) when there are no runs at all."""
    runs_root, out_dir = Path(runs_root), Path(out_dir)
    root = experiment_dir(runs_root, experiment)
    runs = discover_runs(root) if root.is_dir() else []
    if not runs:
        where = root if experiment else runs_root
        raise ValueError(f"no runs found under {where} (expected <suite>/<family>/<algorithm>/seed<N>/)")
    name = experiment or root.name
    board, stability = leaderboard_frame(runs), stability_frame(runs)
    header = make_header("Leaderboard", name, command, config_name)
    stab_header = make_header("Stability", name, command, config_name, ["", *collapse_thresholds(runs)])
    texts = {
        "leaderboard.md": leaderboard_markdown(runs, board, header),
        "leaderboard.csv": _csv(_sorted_board(board)),
        "stability.md": stability_markdown(runs, stability, stab_header),
        "stability.csv": _csv(stability),
    }
    written = {}
    for rel, text in texts.items():
        atomic_write_text(out_dir / rel, text)
        written[rel] = out_dir / rel
    written |= write_figures(runs, out_dir)
    if manifest is not None:
        atomic_write_text(manifest, json.dumps({
            "experiment": name, "command": command, "config": config_name, "commit": git_commit(),
            "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "runs": {r.name: {"state": r.state, "evals": sorted(r.evals)} for r in runs},
            "files": sorted(str(p) for p in written.values()),
        }, indent=1) + "\n")
    return written
