"""Aggregate one experiment's runs into results/: every report of REPORTS (rlvr/report/__init__.py)
that applies, each file written atomically, and a manifest of what was aggregated.

    aggregate(runs_root, out_dir, command=..., config_name=...)   `rlvr aggregate`, the DAG's rule
"""

from __future__ import annotations

import json
from pathlib import Path

from rlvr.io import atomic_write_bytes, atomic_write_text
from rlvr.report import REPORTS, Options
from rlvr.report.header import Header
from rlvr.report.intervals import REPS
from rlvr.report.runs import Run, discover_runs, experiment_dir


def aggregate(
    runs_root: Path, out_dir: Path = Path("results"), *, command: str, config_name: str,
    experiment: str | None = None, manifest: Path | None = None, sweep: str | None = None,
    baseline: str = "grpo", reps: int = REPS,
) -> dict[str, Path]:
    """Write every report that applies for one experiment into `out_dir` (with `sweep`, a
    run-config field such as train.lr, the stress tables too; where runs hold learning curves,
    the scaling fits), and optionally a JSON manifest of what was aggregated (run, state, eval
    files) at `manifest`.

    Returns {name relative to out_dir: path} of every file written. Raises ValueError (one line,
    naming runs_root) when there are no runs at all."""
    runs_root, out_dir = Path(runs_root), Path(out_dir)
    root = experiment_dir(runs_root, experiment)
    runs = discover_runs(root) if root.is_dir() else []
    if not runs:
        where = root if experiment else runs_root
        raise ValueError(f"no runs found under {where} (expected <suite>/<family>/<algorithm>/seed<N>/)")
    header = Header.of(runs, experiment or root.name, command, config_name)
    options = Options(sweep=sweep, curves=_holds_curves(runs), baseline=baseline, reps=reps)
    written = {}
    for report in REPORTS:
        if not report.applies(options):
            continue
        for rel, content in report.make(runs, header, options).items():
            write = atomic_write_bytes if isinstance(content, bytes) else atomic_write_text
            write(out_dir / rel, content)
            written[rel] = out_dir / rel
    if manifest is not None:
        atomic_write_text(manifest, json.dumps({
            "experiment": header.experiment, "command": command, "config": config_name, "commit": header.commit,
            "time": header.time.isoformat(timespec="seconds"),
            "runs": {r.name: {"state": r.state, "evals": sorted(r.evals)} for r in runs},
            "files": sorted(str(p) for p in written.values()),
        }, indent=1) + "\n")
    return written


def _holds_curves(runs: list[Run]) -> bool:
    """Runs evaluated at intermediate checkpoints (the matrix's `curves:`): the scaling report."""
    return any((r.path / "curve").is_dir() for r in runs)
