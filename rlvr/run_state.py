"""Run directory bookkeeping: status.json, metrics.jsonl (+ wandb), checkpoints, prompt cursor."""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from rlvr.config import RunConfig, dump_config
from rlvr.io import atomic_write_json, atomic_write_text
from rlvr.ranks import barrier, is_main


def write_status(run_dir: Path, state: str, step: int, reason: str | None = None, **extra) -> None:
    atomic_write_json(
        run_dir / "status.json", {"state": state, "step": step, "reason": reason, **extra}
    )


def read_status(run_dir: Path) -> dict | None:
    path = Path(run_dir) / "status.json"
    return json.loads(path.read_text()) if path.exists() else None


def save_resolved_config(run_dir: Path, cfg: RunConfig) -> None:
    """<run dir>/config.yaml: the run's resolved config. The run plan has already written it for a
    DAG job (left alone then: its mtime is what Snakemake compares); a run launched by hand with
    overrides records them here."""
    path, text = run_dir / "config.yaml", dump_config(cfg)
    if not path.is_file() or path.read_text() != text:
        atomic_write_text(path, text)


class PromptSampler:
    """Deterministic draws without replacement; reshuffles each epoch. Its cursor is checkpointed."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch, self.pos = n, seed, 0, 0
        self._order = self._perm()

    def _perm(self) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(self.n, generator=g).tolist()

    def next(self, k: int) -> list[int]:
        out = []
        while len(out) < k:
            if self.pos == self.n:
                self.epoch, self.pos = self.epoch + 1, 0
                self._order = self._perm()
            take = min(k - len(out), self.n - self.pos)
            out += self._order[self.pos : self.pos + take]
            self.pos += take
        return out

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.pos = state["epoch"], state["pos"]
        self._order = self._perm()


def _rows_up_to(path: Path, step: int) -> list[str]:
    """JSON lines with `step` ≤ step; a line cut short by a killed process is dropped."""
    rows = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            if json.loads(line)["step"] <= step:
                rows.append(line)
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
    return rows


class MetricsLog:
    """metrics.jsonl (key `step` first) mirrored to wandb; on resume, rows past the step are cut.

    Wall-clock timings (`perf/`) go to perf.jsonl and wandb, not metrics.jsonl, so the same
    config and seed give a byte-identical metrics.jsonl on CPU. Only rank 0 of a data-parallel
    run writes (the metrics are global); on other ranks the log is disabled.
    """

    def __init__(self, run_dir: Path, cfg: RunConfig, resume_step: int, enabled: bool = True):
        self.enabled = enabled
        self.paths = {"metrics": run_dir / "metrics.jsonl", "perf": run_dir / "perf.jsonl"}
        self.wandb = None
        if not enabled:
            return
        for path in self.paths.values():
            atomic_write_text(path, "".join(r + "\n" for r in _rows_up_to(path, resume_step)))
        if cfg.logging.wandb:
            import wandb

            self.wandb = wandb.init(
                project=cfg.logging.project,
                name=str(run_dir),
                dir=str(run_dir),
                config=cfg.model_dump(mode="json"),
                mode=os.environ.get("WANDB_MODE", "offline"),
                reinit="finish_previous",
                settings=wandb.Settings(silent=True, console="off"),
            )

    def log(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        perf = {k: v for k, v in metrics.items() if k.startswith("perf/")}
        rest = {k: v for k, v in metrics.items() if not k.startswith("perf/")}
        for name, row in (("metrics", rest), ("perf", perf)):
            with open(self.paths[name], "a", encoding="utf-8") as f:
                f.write(json.dumps({"step": step, **row}) + "\n")
        if self.wandb is not None:
            self.wandb.log(metrics, step=step)

    def close(self) -> None:
        if self.wandb is not None:
            self.wandb.finish()


def rng_state() -> dict:
    return {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


CKPT_PREFIX = "step_"


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint (incomplete ones are temp folders, never renamed)."""
    root = run_dir / "checkpoints"
    done = (
        sorted(root.glob(f"{CKPT_PREFIX}*"), key=lambda p: int(p.name[len(CKPT_PREFIX) :]))
        if root.exists()
        else []
    )
    return done[-1] if done else None


def save_checkpoint(run_dir: Path, engine, step: int, client_state: dict, keep: int) -> Path:
    """DeepSpeed state (model, optimizer, scheduler) + client state, written to a temp folder and
    renamed, so a killed job leaves either the previous checkpoint or the new one. Every rank of a
    data-parallel run writes its own part into the same folder; rank 0 prepares and renames it."""
    root = run_dir / "checkpoints"
    tmp = root / f".tmp_{CKPT_PREFIX}{step:06d}"
    final = root / f"{CKPT_PREFIX}{step:06d}"
    if is_main():
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    barrier()
    engine.save_checkpoint(str(tmp), tag="state", client_state=client_state)
    barrier()  # every rank's part is on disk
    if is_main():
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in sorted(root.glob(f"{CKPT_PREFIX}*"))[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    barrier()  # no rank reads the folder before it exists
    return final


def load_checkpoint(path: Path, engine) -> dict:
    _, client_state = engine.load_checkpoint(str(path), tag="state")
    return client_state
