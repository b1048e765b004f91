"""Real benchmarks mapped into Records, from the hub or from a local copy.

    name             hub id (config)                   our split -> hub split
    gsm8k            openai/gsm8k (main)               train -> train, test -> test
    math500          HuggingFaceH4/MATH-500            test -> test
    aime2024         HuggingFaceH4/aime_2024           test -> train (the 30 problems of 2024)
    hotpotqa         hotpotqa/hotpot_qa (distractor)   train -> train, test -> validation
    2wikimultihopqa  framolfese/2WikiMultihopQA        train -> train, test -> validation
    musique          dgslibisey/MuSiQue                train -> train, test -> validation
                     (MuSiQue-Ans v1.0 re-uploaded with the original columns)

HotpotQA, 2Wiki and MuSiQue publish no answers for their test splits, so their validation split
is our test split. Math prompts ask for the final answer in \\boxed{}; QA prompts list the context
passages ("[i] Title: text"), the question, and ask for a short answer in \\boxed{}. QA records
also keep the question and its passages (metadata "question", "passages": [[title, text], ...]):
the retrieval setting (evals/suites/search.py) pools the passages into a corpus and asks the
bare question.

`path=` reads a local copy instead of the hub, in the dataset's own schema:
  - a file (.jsonl, .json holding a list or one object per line, or .parquet): the rows of the
    requested split, read directly (the original release formats, e.g. HotpotQA's list-of-pairs
    context, are accepted);
  - a folder: what `datasets.load_dataset(folder)` understands, e.g. a downloaded hub snapshot
    (`hf download <id> --repo-type dataset --local-dir <folder>`) or files named by split
    (validation.jsonl), or a `save_to_disk` folder.
Without `path`, a dataset the hub cannot provide (offline, no cache) raises
DatasetUnavailableError at once, naming the id to download and the `path=` to pass.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from evals.schema import Record

MATH_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
QA_INSTRUCTION = (
    "Answer the question using the passages. Reason step by step, then put the final answer, "
    "a short span, within \\boxed{}."
)

Row = dict[str, Any]


class DatasetUnavailableError(RuntimeError):
    """A benchmark could not be loaded; the message says what to download and where."""


@dataclass(frozen=True)
class Benchmark:
    name: str
    hf_id: str
    config: str | None
    splits: dict[str, str]  # our split name -> hub split name
    task: str  # "math" or "qa"
    to_record: Callable[[Row, str, int], Record]  # (row, hub split, row index) -> Record


# --- row mappers -------------------------------------------------------------------------------


def _math_prompt(problem: str) -> str:
    return f"{problem.strip()}\n{MATH_INSTRUCTION}"


def _qa_prompt(passages: list[tuple[str, str]], question: str) -> str:
    ctx = "\n".join(f"[{i}] {title}: {text}" for i, (title, text) in enumerate(passages, 1))
    return f"{QA_INSTRUCTION}\n\n{ctx}\n\nQ: {question.strip()}\nA:"


def _pairs(field: Any, keys: tuple[str, str]) -> list[tuple[Any, Any]]:
    """Hub columns store {a: [...], b: [...]}; original releases store [[a, b], ...]."""
    if isinstance(field, dict):
        return list(zip(field.get(keys[0]) or [], field.get(keys[1]) or [], strict=True))
    return [(item[0], item[1]) for item in field or []]


def _gsm8k(row: Row, split: str, i: int) -> Record:
    # The answer field is a worked rationale ending in "#### <number>".
    answer = str(row["answer"]).split("####")[-1].strip().replace(",", "")
    return Record(
        id=f"gsm8k-{split}-{i}",
        prompt=_math_prompt(row["question"]),
        answer=answer,
        metadata={"source": "openai/gsm8k", "split": split, "rationale": row["answer"]},
    )


def _math500(row: Row, split: str, i: int) -> Record:
    return Record(
        id=str(row.get("unique_id") or f"math500-{i}"),
        prompt=_math_prompt(row["problem"]),
        answer=str(row["answer"]).strip(),
        metadata={
            "source": "HuggingFaceH4/MATH-500",
            "split": split,
            "subject": row.get("subject"),
            "level": row.get("level"),
        },
    )


def _aime(row: Row, split: str, i: int) -> Record:
    # HuggingFaceH4/aime_2024 uses lower-case columns; Maxwell-Jia/AIME_2024 capitalised ones.
    def get(key: str) -> Any:
        return row.get(key, row.get(key.capitalize(), row.get(key.upper())))

    return Record(
        id=f"aime2024-{get('id') if get('id') is not None else i}",
        prompt=_math_prompt(str(get("problem"))),
        answer=str(get("answer")).strip(),
        metadata={"source": "HuggingFaceH4/aime_2024", "split": split, "url": row.get("url")},
    )


def _titled_context(row: Row) -> list[tuple[str, str]]:
    return [
        (str(title), " ".join(str(s).strip() for s in sentences))
        for title, sentences in _pairs(row.get("context"), ("title", "sentences"))
    ]


def _hotpot_like(source: str) -> Callable[[Row, str, int], Record]:
    def to_record(row: Row, split: str, i: int) -> Record:
        facts = _pairs(row.get("supporting_facts"), ("title", "sent_id"))
        passages = _titled_context(row)
        return Record(
            id=str(row.get("id") or row.get("_id") or f"{source}-{split}-{i}"),
            prompt=_qa_prompt(passages, row["question"]),
            answer=str(row["answer"]).strip(),
            metadata={
                "source": source,
                "split": split,
                "question": str(row["question"]).strip(),
                "passages": [list(p) for p in passages],  # the retrieval setting pools these
                "type": row.get("type"),
                "level": row.get("level"),
                "supporting_facts": [[str(t), int(s)] for t, s in facts],
            },
        )

    return to_record


def _musique(row: Row, split: str, i: int) -> Record:
    paragraphs = row.get("paragraphs") or []
    rid = str(row.get("id") or f"musique-{split}-{i}")
    hops = rid.split("hop")[0]  # ids look like "2hop__...", "3hop1__...", "4hop3__..."
    passages = [(str(p["title"]), str(p["paragraph_text"])) for p in paragraphs]
    return Record(
        id=rid,
        prompt=_qa_prompt(passages, row["question"]),
        answer=str(row["answer"]).strip(),
        metadata={
            "source": "dgslibisey/MuSiQue",
            "split": split,
            "question": str(row["question"]).strip(),
            "passages": [list(p) for p in passages],
            "hops": int(hops) if hops.isdigit() else len(row.get("question_decomposition") or []),
            "answer_aliases": list(row.get("answer_aliases") or []),
            "supporting_idx": [p["idx"] for p in paragraphs if p.get("is_supporting")],
        },
    )


BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in (
        Benchmark(
            "gsm8k", "openai/gsm8k", "main", {"train": "train", "test": "test"}, "math", _gsm8k
        ),
        Benchmark("math500", "HuggingFaceH4/MATH-500", None, {"test": "test"}, "math", _math500),
        Benchmark("aime2024", "HuggingFaceH4/aime_2024", None, {"test": "train"}, "math", _aime),
        Benchmark(
            "hotpotqa",
            "hotpotqa/hotpot_qa",
            "distractor",
            {"train": "train", "test": "validation"},
            "qa",
            _hotpot_like("hotpotqa/hotpot_qa"),
        ),
        Benchmark(
            "2wikimultihopqa",
            "framolfese/2WikiMultihopQA",
            None,
            {"train": "train", "test": "validation"},
            "qa",
            _hotpot_like("framolfese/2WikiMultihopQA"),
        ),
        Benchmark(
            "musique",
            "dgslibisey/MuSiQue",
            None,
            {"train": "train", "test": "validation"},
            "qa",
            _musique,
        ),
    )
}


# --- loading -----------------------------------------------------------------------------------


def load_benchmark(
    name: str,
    split: str = "test",
    path: str | os.PathLike | None = None,
    n: int | None = None,
    seed: int = 0,
) -> list[Record]:
    """Records of one split ("train" or "test") of a benchmark, all rows or a seeded sample of n
    (kept in dataset order)."""
    bench = get_benchmark(name)
    if split not in bench.splits:
        raise ValueError(f"{name} has no {split!r} split; it has {sorted(bench.splits)}")
    hub_split = bench.splits[split]
    rows = (
        _rows_from_path(bench, hub_split, Path(path)) if path else _rows_from_hub(bench, hub_split)
    )
    if bench.name == "musique":  # MuSiQue-Full mixes in unanswerable twins; keep answerable ones
        rows = [r for r in rows if r.get("answerable", True)]
    index = range(len(rows))
    if n is not None and n < len(rows):
        index = sorted(random.Random(seed).sample(index, n))
    return [bench.to_record(rows[i], hub_split, i) for i in index]


def get_benchmark(name: str) -> Benchmark:
    try:
        return BENCHMARKS[name]
    except KeyError:
        raise ValueError(f"unknown benchmark {name!r}; available: {sorted(BENCHMARKS)}") from None


def _rows_from_path(bench: Benchmark, hub_split: str, path: Path) -> list[Row]:
    if not path.exists():
        raise DatasetUnavailableError(f"{bench.name}: path={str(path)!r} does not exist")
    try:
        if path.is_file():
            return _read_file(path)
        import datasets

        if (path / "dataset_dict.json").exists() or (path / "state.json").exists():
            ds = datasets.load_from_disk(str(path))
            ds = ds[hub_split] if isinstance(ds, datasets.DatasetDict) else ds
        else:  # a hub snapshot carries a README naming its configs; plain split files do not
            config = bench.config if (path / "README.md").exists() else None
            ds = datasets.load_dataset(str(path), config, split=hub_split)
        return [dict(r) for r in ds]
    except (OSError, ValueError, KeyError) as e:
        raise DatasetUnavailableError(
            f"{bench.name}: could not read split {hub_split!r} from path={str(path)!r} "
            f"({type(e).__name__}: {_first_line(e)})"
        ) from e


def _read_file(path: Path) -> list[Row]:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    if path.suffix not in (".json", ".jsonl"):
        raise ValueError(f"unsupported file type {path.suffix!r}; use .jsonl, .json or .parquet")
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        return list(json.loads(text))
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _rows_from_hub(bench: Benchmark, hub_split: str) -> list[Row]:
    import datasets

    try:
        with _offline_unless_hub_reachable():
            ds = datasets.load_dataset(bench.hf_id, bench.config, split=hub_split)
    except Exception as e:
        cfg = f" (config {bench.config!r})" if bench.config else ""
        raise DatasetUnavailableError(
            f"cannot load {bench.hf_id}{cfg} split {hub_split!r} "
            f"[{type(e).__name__}: {_first_line(e)}]; download it where the hub is reachable "
            f"(`hf download {bench.hf_id} --repo-type dataset --local-dir data/hub/{bench.name}`), "
            f"copy the folder here and pass path='data/hub/{bench.name}', or pass path= a "
            f".jsonl/.json/.parquet file of that split in the dataset's own schema"
        ) from None
    return [dict(r) for r in ds]


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [""])[0][:200]


def _hub_reachable(timeout_s: float = 3.0) -> bool:
    """A quick TCP probe of the hub endpoint. With a proxy configured, assume reachable."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    try:
        with socket.create_connection((url.hostname or "", url.port or 443), timeout=timeout_s):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def _offline_unless_hub_reachable() -> Iterator[None]:
    """Without a reachable hub, run in offline mode: a cached copy still loads, and a missing one
    fails at once instead of after ~25 s of HTTP retries."""
    import datasets
    from huggingface_hub import constants

    if datasets.config.HF_HUB_OFFLINE or _hub_reachable():
        yield
        return
    saved = datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE = saved
