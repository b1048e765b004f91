"""Shipped synthetic suites: determinism, disjoint splits, correct worked solutions."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

from evals.schema import Record
from evals.suites import SUITES, get_suite
from evals.suites import math as math_suite
from evals.suites.multihop import RELATIONS, TEMPLATES
from evals.verifiers import math_reward, qa_em, qa_f1
from rlvr.data import load_records, write_suite

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"n_train": 600, "n_test": 120}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _hashes(name: str, out: Path, seed: int, **params) -> dict[str, str]:
    paths = write_suite(name, out, seed=seed, **SMALL, **params)
    assert set(paths) == {"train", "test"}
    return {split: _sha256(p) for split, p in paths.items()}


@pytest.mark.parametrize("name", ["math", "multihop"])
def test_same_seed_gives_byte_identical_files(name: str, tmp_path: Path) -> None:
    first = _hashes(name, tmp_path / "a", seed=0)
    assert _hashes(name, tmp_path / "b", seed=0) == first
    other = _hashes(name, tmp_path / "c", seed=1)
    assert other["train"] != first["train"] and other["test"] != first["test"]


def test_files_do_not_depend_on_the_process_hash_seed(tmp_path: Path) -> None:
    # str hashing is randomised per process; output must never depend on set/hash order.
    expected = {n: _hashes(n, tmp_path / f"here-{n}", seed=3) for n in ("math", "multihop")}
    for hash_seed in ("1", "2"):
        out = tmp_path / f"proc{hash_seed}"
        code = (
            "import sys; from rlvr.data import write_suite\n"
            "for n in ('math', 'multihop'):\n"
            f"    write_suite(n, sys.argv[1] + '/' + n, seed=3, **{SMALL!r})\n"
        )
        env = {"PYTHONHASHSEED": hash_seed, "PYTHONPATH": str(ROOT)}
        subprocess.run([sys.executable, "-c", code, str(out)], check=True, env=env, cwd=ROOT)
        for n in ("math", "multihop"):
            got = {s: _sha256(out / n / f"{s}.jsonl") for s in ("train", "test")}
            assert got == expected[n]


def test_write_then_load_round_trips(tmp_path: Path) -> None:
    splits = get_suite("multihop").generate(n_train=20, n_test=5, seed=0)
    paths = write_suite("multihop", tmp_path, seed=0, n_train=20, n_test=5)
    for split, records in splits.items():
        assert load_records(paths[split]) == records


def _problem_key(record: Record) -> str:
    if "expression" in record.metadata:
        return record.metadata["expression"]
    return record.metadata["question"] + " | " + " ".join(record.metadata["chain"])


@pytest.mark.parametrize("name", ["math", "multihop"])
def test_train_and_test_never_overlap(name: str) -> None:
    splits = get_suite(name).generate(seed=0)  # default sizes: 4000 / 256
    train, test = splits["train"], splits["test"]
    assert (len(train), len(test)) == (4000, 256)
    for records in (train, test):  # no duplicates within a split either
        assert (
            len({r.id for r in records}) == len({_problem_key(r) for r in records}) == len(records)
        )
    assert not {r.prompt for r in train} & {r.prompt for r in test}
    assert not {_problem_key(r) for r in train} & {_problem_key(r) for r in test}
    # The split is a function of the problem, so other seeds' test sets are held out too.
    other_test = get_suite(name).generate(n_train=0, n_test=256, seed=1)["test"]
    assert not {_problem_key(r) for r in train} & {_problem_key(r) for r in other_test}


_STEP = re.compile(r"(-?\d+)([+\-*])(\d+)=(-?\d+)")
_MATH_LEVELS = [
    {},
    {"n_operands": 5, "max_operand": 999},
    {"n_operands": [2, 5], "ops": "+-*"},
    {"n_operands": 4, "allow_negative": False},
]


@pytest.mark.parametrize("params", _MATH_LEVELS)
def test_math_solutions_are_correct(params: dict) -> None:
    splits = get_suite("math").generate(n_train=400, n_test=100, seed=0, **params)
    for r in splits["train"] + splits["test"]:
        expr = r.metadata["expression"]
        assert r.prompt == f"Q: {expr}=" and re.fullmatch(r"\d+([+\-*]\d+)+", expr)
        assert eval(expr) == int(r.answer)  # only digits and + - * (checked above)
        solution = r.metadata["solution"]
        assert solution.startswith(" ") and solution.endswith(f" \\boxed{{{r.answer}}}")
        steps = solution.split()[:-1]
        assert len(steps) == expr.count("+") + expr.count("-") + expr.count("*")
        for step in steps:
            a, op, b, c = _STEP.fullmatch(step).groups()
            assert {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op] == int(c)
            if params.get("allow_negative") is False:
                assert int(c) >= 0
        assert int(_STEP.fullmatch(steps[-1]).group(4)) == int(r.answer)
        assert math_reward(solution, r.answer) == 1.0
        for key in ("n_operands", "max_operand", "ops", "allow_negative"):
            assert key in r.metadata


def test_math_prompt_and_solution_format_exactly() -> None:
    assert math_suite.solve([94, 45, 88], ["+", "-"]) == (51, ["94+45=139", "139-88=51"])
    assert math_suite.solve([3, 4, 5], ["+", "*"]) == (23, ["4*5=20", "3+20=23"])
    record = get_suite("math").generate(n_train=1, n_test=0, seed=0)["train"][0]
    expr = record.metadata["expression"]
    value, steps = math_suite.solve(
        [int(x) for x in re.split(r"[+\-*]", expr)], re.findall(r"[+\-*]", expr)
    )
    assert record.metadata["solution"] == " " + " ".join(steps) + f" \\boxed{{{value}}}"


def test_math_rejects_bad_levels_and_too_small_spaces() -> None:
    gen = get_suite("math").generate
    for bad in (
        {"n_operands": 1},
        {"n_operands": 6},
        {"n_operands": "3"},
        {"ops": "/"},
        {"max_operand": 0},
    ):
        with pytest.raises(ValueError):
            gen(n_train=1, n_test=1, **bad)
    with pytest.raises(ValueError, match="too small"):
        gen(n_train=1000, n_test=100, n_operands=2, max_operand=3)


_FACT_PATTERNS = {
    rel: re.compile(re.escape(r.text).replace(r"\{s\}", "(.+)").replace(r"\{o\}", "(.+)"))
    for rel, r in RELATIONS.items()
}
_QUESTION_PATTERNS = {
    t: re.compile(re.escape(q).replace(r"\{s\}", "(.+)")) for t, (_, q) in TEMPLATES.items()
}


def _parse_fact(line: str) -> tuple[str, str, str]:
    matches = [
        (m.group(1), rel, m.group(2))
        for rel, p in _FACT_PATTERNS.items()
        if (m := p.fullmatch(line))
    ]
    assert len(matches) == 1, line
    return matches[0]


def test_multihop_chains_are_answerable_from_the_context() -> None:
    splits = get_suite("multihop").generate(n_train=800, n_test=200, seed=0)
    records = splits["train"] + splits["test"]
    assert {r.metadata["hops"] for r in records} == {2, 3}
    assert {r.metadata["template"] for r in records} == set(TEMPLATES)
    for r in records:
        *passages, q_line, a_line = r.prompt.split("\n")
        assert a_line == "A:" and q_line == f"Q: {r.metadata['question']}"
        facts = [_parse_fact(p) for p in passages]
        assert len(passages) == r.metadata["hops"] + r.metadata["n_distractors"]
        assert r.answer in "\n".join(passages)
        # The world is functional: one object per (subject, relation).
        kb = {(s, rel): o for s, rel, o in facts}
        assert len(kb) == len(facts)
        # Solving the question from the passages alone follows the recorded chain.
        path, _ = TEMPLATES[r.metadata["template"]]
        entity = _QUESTION_PATTERNS[r.metadata["template"]].fullmatch(q_line[3:]).group(1)
        walked = []
        for rel in path:
            walked.append(RELATIONS[rel].text.format(s=entity, o=kb[(entity, rel)]))
            entity = kb[(entity, rel)]
        assert entity == r.answer and walked == r.metadata["chain"]
        assert set(r.metadata["chain"]) <= set(passages)
        assert r.metadata["solution"] == " " + " ".join(walked) + f" \\boxed{{{r.answer}}}"
        assert qa_em(r.metadata["solution"], r.answer) == 1.0
        assert qa_f1(r.metadata["solution"], r.answer) == 1.0
        # Chance level: distinct entities of the answer's type in the context.
        answer_type = r.metadata["answer_type"]
        candidates = {
            x
            for s, rel, o in facts
            for x, t in ((s, RELATIONS[rel].subject), (o, RELATIONS[rel].object))
            if t == answer_type
        }
        assert r.metadata["n_candidates"] == len(candidates) >= 2  # default n_distractors=4
        assert r.metadata["chance"] == pytest.approx(1 / len(candidates))


def test_multihop_parameters() -> None:
    gen = get_suite("multihop").generate
    only3 = gen(n_train=50, n_test=10, seed=0, hops=3, n_distractors=8)
    assert all(r.metadata["hops"] == 3 for r in only3["train"] + only3["test"])
    assert all(r.prompt.count("\n") == 3 + 8 + 1 for r in only3["train"])
    bare = gen(n_train=20, n_test=5, seed=0, hops=[2], n_distractors=0)["train"]
    assert all(r.metadata["chance"] == 1.0 for r in bare)
    for bad in ({"hops": 4}, {"n_distractors": -1}, {"n_distractors": 99}):
        with pytest.raises(ValueError):
            gen(n_train=1, n_test=1, **bad)


def test_registry() -> None:
    assert {"math", "multihop", "gsm8k", "math500", "aime2024", "hotpotqa"} <= set(SUITES)
    assert (SUITES["math"].task, SUITES["math"].reward) == ("math", "math")
    assert (SUITES["multihop"].task, SUITES["multihop"].reward) == ("qa", "qa_f1")
    assert "qa_em" in SUITES["multihop"].rewards
    with pytest.raises(ValueError, match="available: .*math.*multihop"):
        get_suite("nope")
