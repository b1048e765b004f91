"""The real multi-hop QA benchmarks in the retrieval setting: HotpotQA, 2WikiMultihopQA and
MuSiQue asked as bare questions, answered by search episodes (rollout.episode.mode=search), as
the seed paper's QA agents and Search-R1 run them.

    <benchmark>_search   the benchmark's records (evals/suites/loaders.py: the same ids, gold
                         answers, splits, local `path=` or hub id) with the passages taken out
                         of the prompt; the prompt asks for <search> / <answer> turns

Corpus: every passage of the selected questions (each question's own paragraphs, its supporting
ones and its distractors), pooled and de-duplicated, in the FlashRAG / Search-R1 JSONL form; the
data rule writes it and the index rule builds its BM25 index. So a question's evidence is in the
corpus among every other question's paragraphs. A cluster user replaces it with a full retriever
(rollout.episode.retriever.url: Search-R1's e5 server over wiki-18, as the seed does), and then
the pooled corpus is not used.

Reward: search_f1 (F1 of the final <answer> + 0.3 × format); "correct" is its EM.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from evals.schema import Record

PROMPT = (
    "Answer the question. Think inside <think> and </think> whenever you get new information. "
    "To look something up, write <search> query </search>; the top results come back between "
    "<information> and </information>. Search as often as you need. When you know the answer, "
    "give it, a short span, inside <answer> and </answer>.\nQuestion: {question}\n"
)
BENCHMARKS = ("hotpotqa", "2wikimultihopqa", "musique")


def _search_record(r: Record) -> Record:
    meta = {k: v for k, v in r.metadata.items() if k != "passages"}
    return Record(r.id, PROMPT.format(question=r.metadata["question"]), r.answer, meta)


def generator(name: str) -> Callable[..., dict[str, list[Record]]]:
    def generate(n_train: int | None = None, n_test: int | None = None, seed: int = 0,
                 path: str | os.PathLike | None = None) -> dict[str, list[Record]]:
        return {split: [_search_record(r) for r in records]
                for split, records in _splits(name, n_train, n_test, seed, path).items()}

    return generate


def corpus_of(name: str) -> Callable[..., list[dict[str, str]]]:
    def corpus(seed: int = 0, n_train: int | None = None, n_test: int | None = None,
               path: str | os.PathLike | None = None) -> list[dict[str, str]]:
        """The selected questions' passages, each once, in the order first met."""
        seen: dict[tuple[str, str], None] = {}
        for records in _splits(name, n_train, n_test, seed, path).values():
            for r in records:
                seen.update({(str(t), str(x)): None for t, x in r.metadata["passages"]})
        return [{"id": f"{name}-{i}", "contents": f'"{t}"\n{x}'} for i, (t, x) in enumerate(seen)]

    return corpus


def _splits(name, n_train, n_test, seed, path) -> dict[str, list[Record]]:
    """The benchmark's splits as its own suite selects them (a single file: test only)."""
    from evals.suites import get_suite

    return get_suite(name).generate(n_train=n_train, n_test=n_test, seed=seed, path=path)
