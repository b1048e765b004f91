"""Rewards: hand-checked cases, property tests on arbitrary text, size and thread safety."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from evals.verifiers import (
    REWARDS,
    extract_boxed,
    extract_qa_answer,
    get_reward,
    math_reward,
    normalize_answer,
    qa_em,
    qa_f1,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"so the answer is \boxed{51}.", "51"),
        (r"\boxed{ 42 }", "42"),
        (r"\boxed{\frac{1}{2}}", r"\frac{1}{2}"),
        (r"\boxed{\boxed{5}}", "5"),
        (r"first \boxed{1} then \boxed{2}", "2"),
        (r"\boxed{\{1, 2\}}", r"\{1, 2\}"),  # escaped braces are not grouping braces
        (r"}} stray { braces \boxed{7}", "7"),
        (r"\boxed {3}", "3"),
        (r"\boxed{1} and a truncated \boxed{2", None),  # the last answer is unfinished
        (r"\boxed{", None),
        ("no box at all", None),
        ("", None),
    ],
)
def test_extract_boxed(text: str, expected: str | None) -> None:
    assert extract_boxed(text) == expected


@pytest.mark.parametrize(
    ("completion", "answer", "reward"),
    [
        (r" 94+45=139 139-88=51 \boxed{51}", "51", 1.0),
        (r"\boxed{ 42 }", "42", 1.0),
        (r"\boxed{-7}", "-7", 1.0),
        (r"\boxed{1,000}", "1000", 1.0),
        (r"\boxed{\boxed{51}}", "51", 1.0),
        (r"\boxed{52}", "51", 0.0),
        ("51", "51", 0.0),  # the answer must be boxed
        (r"\boxed{51", "51", 0.0),
        (r"\boxed{}", "51", 0.0),
        (r"\boxed{0.5}", r"\frac{1}{2}", 1.0),  # through math-verify
        (r"\boxed{\frac{1}{2}}", "0.5", 1.0),
        (r"\boxed{\frac{2}{4}}", r"\frac{1}{2}", 1.0),
        (r"\boxed{51.0}", "51", 1.0),
        (r"\boxed{(3, \pi/2)}", r"\left( 3, \frac{\pi}{2} \right)", 1.0),
        (r"\boxed{\frac{1}{3}}", "0.5", 0.0),
        (r"\boxed{x+1}", "2", 0.0),
    ],
)
def test_math_reward_hand_cases(completion: str, answer: str, reward: float) -> None:
    assert math_reward(completion, answer) == reward


def test_normalize_answer_is_squad_style() -> None:
    assert normalize_answer("  The  Kingdom of NORWAY!  ") == "kingdom of norway"
    assert normalize_answer("an apple, a pear") == "apple pear"
    assert normalize_answer("Arthur's Magazine") == "arthurs magazine"


@pytest.mark.parametrize(
    ("completion", "prediction"),
    [
        (r" Ann lives in Oslo. Oslo is in Norway. \boxed{Norway}", "Norway"),
        ("Passage.\nQ: where?\nA: Norway\nQ: next question", "Norway"),
        (" Norway\nmore text", "Norway"),
        ("", ""),
    ],
)
def test_extract_qa_answer(completion: str, prediction: str) -> None:
    assert extract_qa_answer(completion) == prediction


def test_qa_em_and_f1() -> None:
    assert qa_em(r"\boxed{the Norway.}", "Norway") == 1.0
    assert qa_em(r"\boxed{Kingdom of Norway}", "Norway") == 0.0
    assert qa_f1(r"\boxed{Kingdom of Norway}", "Norway") == pytest.approx(0.5)
    assert qa_f1(r"\boxed{Chief of Protocol}", "Chief of Protocol") == 1.0
    # HotpotQA's rule: yes/no/noanswer get no partial credit.
    assert qa_f1(r"\boxed{yes}", "no") == 0.0
    assert qa_f1(r"\boxed{no way}", "no") == 0.0
    assert qa_f1(r"\boxed{yes}", "yes") == 1.0
    assert qa_em(r"\boxed{Ogden, Utah}", ["Ogden", "Ogden, Utah"]) == 1.0  # aliases


def test_search_reward_is_answer_f1_plus_0_3_format() -> None:
    from evals.verifiers import model_turns, search_f1, search_f1_think, search_format
    from rlvr.config import EpisodeConfig
    from rlvr.retrieval import Passage
    from rlvr.rollout.episode import INVALID, information

    info = information([Passage("1", "Bako", "Bako lives in Varno.", 1.0)], EpisodeConfig())
    clean = "<search>Bako</search>" + info + "<search>Varno</search>" + info + "<answer>Kesmark</answer>"
    assert model_turns(clean) == ["<search>Bako</search>", "<search>Varno</search>", "<answer>Kesmark</answer>"]
    assert search_f1(clean, "Kesmark") == pytest.approx(1.3)
    assert search_f1_think(clean, "Kesmark") == 1.0  # the seed's format needs <think> in every turn
    # 3 turns, the middle one malformed: format 2/3; "Kes mark" shares no token with "Kesmark"
    messy = "<think>a</think><search>Bako</search>" + info + "junk" + INVALID + "<think>b</think> <answer>Kes mark</answer>"
    assert search_format(messy) == search_format(messy, think=True) == pytest.approx(2 / 3)
    assert search_f1(messy, "Kesmark") == pytest.approx(0.3 * 2 / 3)
    # precision 2/3, recall 1: F1 = 2·(2/3)/(2/3 + 1) = 0.8
    assert search_f1("<search>x</search>" + info + "<answer>New York City</answer>", "York City") == pytest.approx(0.8 + 0.3)
    assert search_f1("<answer>Kesmark</answer>", "Kesmark") == 1.0  # one turn never searched: format 0
    assert search_f1("<search>Bako</search>" + info + "Kesmark", "Kesmark") == pytest.approx(0.3 * 1 / 2)  # no <answer>
    assert search_format("<search>a <b>c</b></search>" + info + "<answer>x</answer>") == 0.5  # tags inside


def test_reward_registry() -> None:
    assert set(REWARDS) == {"math", "qa_em", "qa_f1", "search_f1", "search_f1_think"}
    assert get_reward("qa_f1") is qa_f1
    with pytest.raises(ValueError, match="math.*qa_em.*qa_f1"):
        get_reward("nope")


_latexish = st.text(alphabet="0123456789+-*/^_{}()[]\\.,= xyabcfrac sqrt pi", max_size=60)
_any_completion = st.one_of(
    st.text(max_size=300),
    st.builds(lambda a, b: f"{a}\\boxed{{{b}}}", st.text(max_size=50), _latexish),
    st.builds(lambda a, b: f"{a}\\boxed{{{b}}}", st.text(max_size=50), st.text(max_size=50)),
)
_property = settings(
    max_examples=150,
    deadline=timedelta(seconds=10),
    suppress_health_check=[HealthCheck.too_slow],
)


@_property
@given(completion=_any_completion, answer=st.one_of(st.text(max_size=30), _latexish))
def test_rewards_are_bounded_and_never_raise(completion: str, answer: str) -> None:
    for reward in REWARDS.values():
        value = reward(completion, answer)
        assert isinstance(value, float) and 0.0 <= value <= 1.0


@_property
@given(value=st.integers(-(10**12), 10**12), noise=st.text(max_size=80))
def test_boxed_gold_integer_always_scores_one(value: int, noise: str) -> None:
    assert math_reward(f"{noise} \\boxed{{{value}}}", str(value)) == 1.0
    assert math_reward(f"{noise} \\boxed{{{value + 1}}}", str(value)) == 0.0


@pytest.mark.parametrize(
    "huge",
    [
        "x" * 2_000_000 + r"\boxed{5}",
        "{" * 2_000_000,
        r"\boxed{" * 300_000,
        r"\boxed{" + "{" * 1_000_000 + "}" * 1_000_000 + "}",
        "é🙂\u200b" * 700_000,
        "A:" * 1_000_000,
    ],
)
def test_megabyte_completions_finish_quickly(huge: str) -> None:
    start = time.perf_counter()
    for reward in REWARDS.values():
        assert 0.0 <= reward(huge, "5") <= 1.0
    assert time.perf_counter() - start < 5.0


def test_math_verify_works_from_a_worker_thread() -> None:
    # math-verify's timeouts use signal.alarm, which raises outside the main thread.
    cases = [(r"\boxed{0.5}", r"\frac{1}{2}", 1.0), (r"\boxed{\frac{1}{3}}", "0.5", 0.0)] * 4
    with ThreadPoolExecutor(max_workers=2) as pool:
        got = list(pool.map(lambda c: math_reward(c[0], c[1]), cases))
    assert got == [c[2] for c in cases]
