"""The runs tree of one experiment, read back for the tables in results/ (where each file is
written: the plan's Paths, rlvr/plan.py):

    runs/<experiment>/<suite>/<model>/<algorithm label>/seed<N>/   config.yaml, metrics.jsonl,
        status.json, provenance.json, eval/<eval_suite>.json, curve/<eval_suite>.json
    runs/<experiment>/<suite>/<model>/base/                        config.yaml, sft.json, eval/

Everything is read leniently: a missing or half-written file reads as absent, so a tree a killed
job left behind can still be aggregated.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import pandas as pd
import yaml

from rlvr.plan import MANIFEST

BASE = "base"
BASE_LABEL = "base (before RL)"
FINISHED = ("completed", "collapsed")
SEED_DIR = re.compile(r"seed(\d+)")
EDGE = 3  # steps averaged for a run's "initial" and "final" values
PRIMARY_METRIC = "pass@1"  # the score the all-tasks table, the stress tables and the scaling fits use
TAXONOMY_BINS = ("pos_peak", "pos_valley", "neg_peak", "neg_valley")  # rlvr/stats.py's token_taxonomy


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

    @cached_property
    def config(self) -> dict:
        """The resolved run config (config.yaml), {} when unreadable."""
        return read_yaml(self.path / "config.yaml")

    @cached_property
    def provenance(self) -> dict:
        return read_json(self.path / "provenance.json") or {}

    def setting(self, dotted: str, default=None):
        """A field of the resolved config, e.g. setting("train.lr")."""
        node = self.config
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                return default
            node = node[part]
        return node

    @property
    def algorithm_name(self) -> str:
        """The registered algorithm (a label such as `grpo@lr=1e-3` names a configuration of it)."""
        return BASE if self.is_base else str(self.setting("algorithm.name", self.algorithm))

    @property
    def model_family(self) -> str:
        """The architecture its base was built as (the base checkpoint's model_type: two bases of
        one family pool into it), or the model label when there is no base directory (HF model)."""
        base = self.path if self.is_base else self.path.parent.parent / BASE
        family = (read_json(base / "config.json") or {}).get("model_type")
        return str(family) if family else self.family

    def wall_s(self) -> float:
        """Seconds its training took over all launches (status.json; SFT time for a base)."""
        if self.is_base:
            value = (read_json(self.path / "sft.json") or {}).get("seconds")
        else:
            value = (self.status or {}).get("wall_s")
        return float(value) if isinstance(value, (int, float)) else math.nan


def read_json(path: Path) -> dict | None:
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


def series(frame: pd.DataFrame, key: str) -> pd.Series:
    """One metric of a metrics frame as numbers, steps that did not log it dropped."""
    if key not in frame:
        return pd.Series(dtype=float)
    return pd.to_numeric(frame[key], errors="coerce").dropna()


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def eval_scores(data: dict) -> dict[str, float]:
    """The numeric entries of an eval JSON's `metrics` (e.g. pass@1, avg@4, pass@4, em, f1)."""
    out = {}
    for key, value in (data.get("metrics") or {}).items():
        if isinstance(value, dict):  # tolerate {"value": x, "stderr": y}
            value = value.get("value", value.get("mean"))
        if key != "chance" and "stderr" not in key and is_number(value):
            out[key] = float(value)
    return out


def read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def _load_run(root: Path, path: Path, seed: int | None) -> Run:
    suite, family, algorithm = path.relative_to(root).parts[:3]
    evals = {f.stem: d for f in sorted((path / "eval").glob("*.json")) if (d := read_json(f))}
    return Run(suite, family, algorithm, seed, path, read_json(path / "status.json"), evals)


def _visible(path: Path, root: Path) -> bool:
    return path.is_dir() and not any(p.startswith(".") for p in path.relative_to(root).parts)


def discover_runs(root: Path) -> list[Run]:
    """The runs of an experiment directory, in a stable order: those its run plan lists
    (<root>/plan.json, rlvr/plan.py: what the matrix asks for, not what an older matrix left on
    disk), or for a tree without a plan every seed directory and base model found in it."""
    planned = read_json(root / MANIFEST)
    if planned is not None:
        runs = [_load_run(root, root / r["dir"], r["seed"]) for r in planned["runs"] if (root / r["dir"]).is_dir()]
    else:
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


def excluded_notes(runs: list[Run]) -> str:
    """The note the leaderboard and stability tables end with: the incomplete and failed runs they
    leave out."""
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
