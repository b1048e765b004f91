"""Real-benchmark loaders, offline: fixtures in each dataset's schema, and the offline error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

# No test here may reach the hub; set before `datasets` is first imported (it reads it once).
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from evals.suites import SUITES  # noqa: E402
from evals.suites.loaders import (  # noqa: E402
    BENCHMARKS,
    MATH_INSTRUCTION,
    DatasetUnavailableError,
    load_benchmark,
)
from evals.verifiers import get_reward  # noqa: E402
from rlvr.data import write_suite  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "evals" / "fixtures"

# benchmark -> (fixture file, expected gold answers in order)
EXPECTED = {
    "gsm8k": ("gsm8k/test.jsonl", ["18", "3", "70000"]),
    "math500": (
        "math500/test.jsonl",
        [r"\left( 3, \frac{\pi}{2} \right)", r"\frac{1}{2}", "6", "3, -3"],
    ),
    "aime2024": ("aime2024/train.jsonl", ["204", "25", "809"]),
    "hotpotqa": ("hotpotqa/validation.jsonl", ["yes", "Chief of Protocol", "Animorphs"]),
    "2wikimultihopqa": (
        "2wikimultihopqa/validation.jsonl",
        ["Małgorzata Braunek", "The Mask Of Fu Manchu", "no"],
    ),
    "musique": ("musique/validation.jsonl", ["Arif Habib", "Anne Hidalgo", "Ogden"]),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_loads_through_path(name: str) -> None:
    fixture, answers = EXPECTED[name]
    records = load_benchmark(name, "test", path=FIXTURES / fixture)
    assert [r.answer for r in records] == answers
    assert len({r.id for r in records}) == len(records)
    reward = get_reward(SUITES[name].reward)
    for r in records:
        assert "\\boxed{}" in r.prompt
        assert r.metadata["source"] == BENCHMARKS[name].hf_id
        assert reward(f"so \\boxed{{{r.answer}}}", r.answer) == 1.0  # gold is verifiable
    if BENCHMARKS[name].task == "math":
        assert all(r.prompt.endswith(MATH_INSTRUCTION) for r in records)
    else:
        assert all(r.prompt.endswith("\nA:") and "\n[1] " in r.prompt for r in records)


def test_mapping_details() -> None:
    gsm = load_benchmark("gsm8k", "test", path=FIXTURES / "gsm8k/test.jsonl")
    assert gsm[0].prompt.startswith("Janet’s ducks lay 16 eggs per day.")
    assert gsm[0].metadata["rationale"].endswith("#### 18")
    train = load_benchmark("gsm8k", "train", path=FIXTURES / "gsm8k/train.jsonl")
    assert [r.answer for r in train] == ["72", "1800", "10"]  # "#### 1,800" -> "1800"
    math500 = load_benchmark("math500", path=FIXTURES / "math500/test.jsonl")
    assert math500[0].id == "test/precalculus/807.json"
    assert (math500[0].metadata["subject"], math500[0].metadata["level"]) == ("Precalculus", 2)
    hotpot = load_benchmark("hotpotqa", path=FIXTURES / "hotpotqa/validation.jsonl")[1]
    assert "[2] Shirley Temple: Shirley Temple Black (April 23, 1928" in hotpot.prompt
    assert "diplomat. As an adult" in hotpot.prompt  # sentences joined with one space
    assert hotpot.metadata["supporting_facts"] == [
        ["Kiss and Tell (1945 film)", 0],
        ["Shirley Temple", 1],
    ]
    musique = load_benchmark("musique", path=FIXTURES / "musique/validation.jsonl")
    assert [r.metadata["hops"] for r in musique] == [2, 3, 2]
    assert musique[0].metadata["answer_aliases"] == ["Arif Habib Group"]
    assert musique[0].metadata["supporting_idx"] == [2, 3]


def test_original_release_format_and_parquet(tmp_path: Path) -> None:
    # HotpotQA's and 2Wiki's own JSON releases: "_id", one JSON array, [title, sentences] pairs.
    row = json.loads((FIXTURES / "hotpotqa/validation.jsonl").read_text().splitlines()[1])
    original = dict(row, _id=row.pop("id"))
    original["context"] = [list(p) for p in zip(*row["context"].values(), strict=True)]
    original["supporting_facts"] = [
        list(p) for p in zip(*row["supporting_facts"].values(), strict=True)
    ]
    (tmp_path / "dev.json").write_text(json.dumps([original]))
    hub_style = load_benchmark("hotpotqa", path=FIXTURES / "hotpotqa/validation.jsonl")[1]
    assert load_benchmark("hotpotqa", path=tmp_path / "dev.json") == [hub_style]

    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [json.loads(x) for x in (FIXTURES / "math500/test.jsonl").read_text().splitlines()]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "test.parquet")
    assert load_benchmark("math500", path=tmp_path / "test.parquet") == load_benchmark(
        "math500", path=FIXTURES / "math500/test.jsonl"
    )


def test_folder_path_and_suite_interface(tmp_path: Path) -> None:
    splits = SUITES["gsm8k"].generate(path=FIXTURES / "gsm8k")  # files named by split
    assert {s: [r.answer for r in rs] for s, rs in splits.items()} == {
        "train": ["72", "1800", "10"],
        "test": ["18", "3", "70000"],
    }
    paths = write_suite("hotpotqa", tmp_path, n_train=0, path=FIXTURES / "hotpotqa")
    assert list(paths) == ["test"] and len(paths["test"].read_text().splitlines()) == 3
    single = SUITES["musique"].generate(path=FIXTURES / "musique/validation.jsonl")
    assert list(single) == ["test"]  # a single file is the eval split only


def test_seeded_subsample_keeps_dataset_order() -> None:
    path = FIXTURES / "math500/test.jsonl"
    full = load_benchmark("math500", path=path)
    sample = load_benchmark("math500", path=path, n=2, seed=5)
    assert sample == load_benchmark("math500", path=path, n=2, seed=5)
    assert len(sample) == 2 and sample == [r for r in full if r in sample]


def test_musique_drops_unanswerable_rows(tmp_path: Path) -> None:
    rows = [json.loads(x) for x in (FIXTURES / "musique/validation.jsonl").read_text().splitlines()]
    rows[1]["answerable"] = False
    (tmp_path / "full.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert [r.answer for r in load_benchmark("musique", path=tmp_path / "full.jsonl")] == [
        "Arif Habib",
        "Ogden",
    ]


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="available: .*gsm8k"):
        load_benchmark("nope")
    with pytest.raises(ValueError, match="no 'train' split"):
        load_benchmark("math500", "train", path=FIXTURES / "math500/test.jsonl")
    with pytest.raises(DatasetUnavailableError, match="does not exist"):
        load_benchmark("gsm8k", path=FIXTURES / "missing.jsonl")


def test_offline_without_path_fails_fast_with_a_clear_error(tmp_path: Path) -> None:
    # A fresh process with an empty cache and offline mode, as on a machine without the hub.
    code = (
        "import time\n"
        "from evals.suites.loaders import BENCHMARKS, DatasetUnavailableError, load_benchmark\n"
        "for name in BENCHMARKS:\n"
        "    t = time.perf_counter()\n"
        "    try:\n"
        "        load_benchmark(name)\n"
        "    except DatasetUnavailableError as e:\n"
        "        print(name, round(time.perf_counter() - t, 2), e, sep='\\t')\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path), "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert time.perf_counter() - start < 60, "offline failure must not wait on network retries"
    lines = [line.split("\t") for line in out.stdout.splitlines()]
    assert [name for name, *_ in lines] == list(BENCHMARKS), out.stderr[-2000:]
    for name, seconds, message in lines:
        assert float(seconds) < 10
        assert BENCHMARKS[name].hf_id in message and "path=" in message
        assert "\n" not in message
