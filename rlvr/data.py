"""Suite data on disk: a suite's splits as JSONL files of evals.schema.Record, the first stage of
the pipeline (`rlvr data`, the DAG's data rule) and what training, SFT and evaluation read."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from evals.schema import Record
from evals.suites import get_suite
from rlvr.io import atomic_write_jsonl, read_jsonl


def write_suite(
    name: str,
    out_dir: str | os.PathLike,
    seed: int = 0,
    n_train: int | None = None,
    n_test: int | None = None,
    **params: Any,
) -> dict[str, Path]:
    """Generate a suite and write out_dir/<split>.jsonl atomically, and a search suite's
    out_dir/corpus.jsonl; returns {split or "corpus": path}."""
    suite = get_suite(name)
    splits = suite.generate(n_train=n_train, n_test=n_test, seed=seed, **params)
    paths = {}
    for split, records in splits.items():
        paths[split] = Path(out_dir) / f"{split}.jsonl"
        atomic_write_jsonl(paths[split], (r.to_dict() for r in records))
    if suite.corpus is not None:
        paths["corpus"] = Path(out_dir) / "corpus.jsonl"
        atomic_write_jsonl(paths["corpus"], suite.corpus(seed, n_train, n_test, **params))
    return paths


def load_records(path: str | os.PathLike) -> list[Record]:
    """Records from a JSONL file written by write_suite."""
    return [Record.from_dict(d) for d in read_jsonl(path)]
