"""Deterministic, disjoint train/test splits for generated suites.

A problem's split is a pure function of its canonical key (a hash), never of the seed or the
requested sizes. So no problem can be in train for one seed and in test for another: a model
trained on any seed's train split never saw any seed's test problems.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable

from evals.schema import Record

TEST_BUCKETS = 2  # of 10: ~20% of the problem space is reserved for test
SPLITS = ("train", "test")


def split_of(key: str) -> str:
    """'test' or 'train' for a canonical problem key (stable across Python runs and machines)."""
    bucket = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % 10
    return "test" if bucket < TEST_BUCKETS else "train"


def key_id(prefix: str, key: str) -> str:
    """A stable record id derived from the canonical key."""
    return f"{prefix}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def fill_splits(
    draw: Callable[[random.Random], tuple[str, Record]],
    n_train: int,
    n_test: int,
    seed: int,
    max_draws: int | None = None,
) -> dict[str, list[Record]]:
    """Draw (key, record) pairs until both splits hold their size, deduplicating on the key.

    Raises ValueError if the problem space is too small to fill the sizes within max_draws.
    """
    if n_train < 0 or n_test < 0:
        raise ValueError(f"split sizes must be >= 0, got n_train={n_train}, n_test={n_test}")
    rng = random.Random(seed)
    want = {"train": n_train, "test": n_test}
    out: dict[str, list[Record]] = {"train": [], "test": []}
    seen: set[str] = set()
    max_draws = max_draws if max_draws is not None else 20 * (n_train + n_test) + 10_000
    for _ in range(max_draws):
        if all(len(out[s]) >= want[s] for s in SPLITS):
            return out
        key, record = draw(rng)
        split = split_of(key)
        if key in seen or len(out[split]) >= want[split]:
            continue
        seen.add(key)
        out[split].append(record)
    if all(len(out[s]) >= want[s] for s in SPLITS):
        return out
    got = {s: len(out[s]) for s in SPLITS}
    raise ValueError(
        f"drew only {got} unique problems of {want} requested after {max_draws} tries; "
        "the problem space is too small for these sizes (raise max_operand/n_operands or "
        "lower the sizes)"
    )
