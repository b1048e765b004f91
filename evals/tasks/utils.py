"""Functions the lm-eval task YAMLs call (`!function evals.tasks.utils.NAME`).

Scoring calls the very reward functions training uses (evals.verifiers), on the raw completion,
so one completion scores identically in an RL step and in evaluation:

    math suites   acc = math_reward                       (0/1)
    QA suites     em  = qa_em, f1 = qa_f1                 (a QA suite trains on one of them)
    search suites em, f1 of the final <answer>, and the    (a search suite trains on one of
                  search rewards search_f1, _think;        the two search rewards)
                  searches per episode, two_searches

Each doc is one `generate_until` request with `repeats` completions (1 greedy, or k sampled); the
`keep_all` filter hands all of them to process_results, which reports per doc the mean over the
completions and pass@n (any correct, from the unbiased estimator with k = n; "correct" is
math_reward == 1 for math and EM == 1 for QA). lm-eval averages these over docs.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

from evals.suites.loaders import load_benchmark
from evals.verifiers import math_reward, qa_em, qa_f1, search_count, search_f1, search_f1_think


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct (Chen et al. 2021, HumanEval):
    1 - C(n-c, k) / C(n, k). With k = n it is 1.0 if any sample is correct, else 0.0."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def keep_all(resps: Iterable[list[str]], docs: Sequence[dict]) -> list[list[str]]:
    """A filter that keeps every completion of every doc (lm-eval's default keeps the first)."""
    return [list(r) for r in resps]


def completions(results: Sequence[Any]) -> list[str]:
    """The completions of one doc, flattened: lm-eval passes one entry per request, and our one
    request's entry is the list `keep_all` left (a bare string if another filter picked one)."""
    out: list[str] = []
    for r in results:
        out.extend(r if isinstance(r, list | tuple) else [r])
    return [str(c) for c in out]


def process_math(doc: dict, results: Sequence[Any]) -> dict[str, float]:
    texts = completions(results)
    rewards = [math_reward(t, doc["answer"]) for t in texts]
    n, correct = len(rewards), sum(r == 1.0 for r in rewards)
    return {"acc": sum(rewards) / n, "pass_at_n": pass_at_k(n, correct, n)}


def process_qa(doc: dict, results: Sequence[Any]) -> dict[str, float]:
    texts = completions(results)
    em = [qa_em(t, doc["answer"]) for t in texts]
    f1 = [qa_f1(t, doc["answer"]) for t in texts]
    n, correct = len(em), sum(e == 1.0 for e in em)
    return {"em": sum(em) / n, "f1": sum(f1) / n, "pass_at_n": pass_at_k(n, correct, n)}


def process_search(doc: dict, results: Sequence[Any]) -> dict[str, float]:
    """QA's metrics of the episodes' answers, the search rewards themselves, and how the
    episodes searched: searches per episode and the share that searched at least twice."""
    texts = completions(results)
    out = process_qa(doc, results)
    for name, reward in (("search_f1", search_f1), ("search_f1_think", search_f1_think)):
        out[name] = sum(reward(t, doc["answer"]) for t in texts) / len(texts)
    counts = [search_count(t) for t in texts]
    out["searches"] = sum(counts) / len(texts)
    out["two_searches"] = sum(c >= 2 for c in counts) / len(texts)
    return out


def benchmark_dataset(benchmark: str, path: str | None = None, **_: Any):
    """`custom_dataset` of the real-benchmark tasks: the test split through our loaders, so the
    prompts, gold answers, row filtering (MuSiQue's unanswerable twins) and the one-line error
    for an unreachable hub are exactly those of evals.suites.loaders. `path` is a local copy in
    the dataset's own schema (file or folder); None reads the hub id. lm-eval also passes the
    task metadata as keyword arguments; they are ignored."""
    import datasets

    docs = [
        {"id": r.id, "prompt": r.prompt, "answer": r.answer}  # metadata varies too much for Arrow
        for r in load_benchmark(benchmark, "test", path=path)
    ]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(docs)})
