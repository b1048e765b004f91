"""The suite registry: shipped synthetic suites and real benchmarks behind one interface.

    from evals.suites import SUITES, get_suite
    suite = get_suite("math")
    splits = suite.generate(n_train=4000, n_test=256, seed=0, max_operand=999)

(rlvr.data.write_suite writes a suite's splits to JSONL files, `rlvr data` on the command line.)

Every suite's generate(n_train=None, n_test=None, seed=0, **params) returns
{split: [Record, ...]}. Synthetic suites default to 4000/256 and are deterministic for a seed;
benchmarks default to all rows (a seeded sample when a size is given), take `path=` for a local
copy, and return only the splits they have (math500 and aime2024: "test" only; with path= a
single file: "test" only). A size of 0 skips a split.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from evals.schema import Record
from evals.suites import closedbook, loaders, multihop, openbook, search
from evals.suites import math as math_suite

Splits = dict[str, list[Record]]


@dataclass(frozen=True)
class Suite:
    name: str
    task: str  # "math" or "qa"
    reward: str  # default reward name in evals.verifiers.REWARDS
    generate: Callable[..., Splits]
    rewards: tuple[str, ...] = field(default=())  # every reward that applies to this suite
    description: str = ""
    # the reward whose value 1 is "correct" (SFT's sampled accuracy); default: `reward`
    correct: str | None = None
    # search suites: (seed, n_train, n_test, **params) -> the passages of their corpus ({"id", "contents"}), which
    # `rlvr data` writes beside the splits; episodes search it (rollout.episode.mode=search)
    corpus: Callable[..., list[dict]] | None = None

    @property
    def correctness(self) -> str:
        return self.correct or self.reward


def _benchmark_generate(name: str) -> Callable[..., Splits]:
    def generate(
        n_train: int | None = None,
        n_test: int | None = None,
        seed: int = 0,
        path: str | os.PathLike | None = None,
    ) -> Splits:
        bench = loaders.get_benchmark(name)
        sizes = {"train": n_train, "test": n_test}
        single_file = path is not None and Path(path).is_file()
        return {
            split: loaders.load_benchmark(name, split, path=path, n=sizes[split], seed=seed)
            for split in ("train", "test")
            if split in bench.splits and sizes[split] != 0 and not (single_file and split != "test")
        }

    return generate


_MATH_REWARDS = ("math",)
_QA_REWARDS = ("qa_f1", "qa_em")

SUITES: dict[str, Suite] = {
    "math": Suite(
        "math", "math", "math", math_suite.generate, _MATH_REWARDS, "synthetic arithmetic"
    ),
    "multihop": Suite(
        "multihop",
        "qa",
        "qa_f1",
        multihop.generate,
        _QA_REWARDS,
        "synthetic in-context multi-hop QA",
    ),
    "closedbook": Suite(
        "closedbook",
        "qa",
        "qa_em",
        closedbook.generate,
        _QA_REWARDS,
        "synthetic closed-book multi-hop QA over a fixed knowledge base",
    ),
    "openbook": Suite(
        "openbook",
        "qa",
        "search_f1",
        openbook.generate,
        ("search_f1", "search_f1_think", *_QA_REWARDS),
        "synthetic open-book multi-hop QA: search episodes over the closedbook knowledge base",
        correct="qa_em",
        corpus=openbook.corpus,
    ),
    **{
        b.name: Suite(
            b.name,
            b.task,
            "math" if b.task == "math" else "qa_f1",
            _benchmark_generate(b.name),
            _MATH_REWARDS if b.task == "math" else _QA_REWARDS,
            f"{b.hf_id} (real benchmark)",
        )
        for b in loaders.BENCHMARKS.values()
    },
}


# the multi-hop benchmarks in the retrieval setting: bare questions, search episodes over their
# pooled passages (evals/suites/search.py)
SUITES.update({
    f"{b}_search": Suite(
        f"{b}_search", "qa", "search_f1", search.generator(b), ("search_f1", "search_f1_think", *_QA_REWARDS),
        f"{loaders.BENCHMARKS[b].hf_id} in the retrieval setting (search episodes)",
        correct="qa_em", corpus=search.corpus_of(b),
    )
    for b in search.BENCHMARKS
})  # fmt: skip


def register_suite(suite: Suite) -> Suite:
    """Add a suite from a module of your own (the matrix's `modules:` list imports it, planning
    included: such a module imports no torch). A name already taken is an error."""
    if suite.name in SUITES and SUITES[suite.name] is not suite:
        raise ValueError(f"suite {suite.name!r} is already registered; pick another name")
    SUITES[suite.name] = suite
    return suite


def available() -> list[str]:
    return sorted(SUITES)


def get_suite(name: str) -> Suite:
    try:
        return SUITES[name]
    except KeyError:
        raise ValueError(f"unknown suite {name!r}; available: {available()}") from None
