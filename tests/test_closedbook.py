"""The closed-book multi-hop suite: a fixed KB per seed, held-out compositions of seen facts."""

from __future__ import annotations

import hashlib
import statistics
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from evals.suites import SUITES, get_suite
from evals.suites.closedbook import (
    QUESTIONS,
    TEMPLATES,
    baselines,
    fact_text,
    knowledge_base,
)
from evals.verifiers import get_reward, qa_em, qa_f1
from rlvr.data import load_records, write_suite

ROOT = Path(__file__).resolve().parents[1]
SUITE = get_suite("closedbook")
# The rollout budget the suite needs (byte tokenizer: one token per character, plus EOS).
MAX_NEW_TOKENS = 64


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _one_hop_facts(records) -> set[str]:
    return {r.metadata["chain"][0] for r in records if r.metadata["hops"] == 1}


def test_registered_as_qa_with_exact_match_reward() -> None:
    assert SUITES["closedbook"] is SUITE
    assert (SUITE.task, SUITE.reward) == ("qa", "qa_em")
    assert {"qa_em", "qa_f1"} <= set(SUITE.rewards)


def test_same_seed_gives_byte_identical_files_in_any_process(tmp_path: Path) -> None:
    first = {s: _sha(p) for s, p in write_suite("closedbook", tmp_path / "a", seed=0).items()}
    again = {s: _sha(p) for s, p in write_suite("closedbook", tmp_path / "b", seed=0).items()}
    other = {s: _sha(p) for s, p in write_suite("closedbook", tmp_path / "c", seed=1).items()}
    assert again == first and set(first) == {"train", "test"}
    assert other["train"] != first["train"] and other["test"] != first["test"]
    # str hashing is randomised per process; the files must not depend on it.
    code = "import sys; from rlvr.data import write_suite; write_suite('closedbook', sys.argv[1], seed=0)"
    for hash_seed in ("1", "2"):
        out = tmp_path / f"proc{hash_seed}"
        env = {"PYTHONHASHSEED": hash_seed, "PYTHONPATH": str(ROOT)}
        subprocess.run([sys.executable, "-c", code, str(out)], check=True, env=env, cwd=ROOT)
        assert {s: _sha(out / f"{s}.jsonl") for s in first} == first
    assert load_records(tmp_path / "a" / "test.jsonl") == SUITE.generate(seed=0)["test"]


@pytest.mark.parametrize("params", [{}, {"n_companies": 12, "n_people": 120}])
def test_test_compositions_are_unseen_but_built_from_seen_facts(params: dict) -> None:
    for seed in (0, 1):
        splits = SUITE.generate(seed=seed, **params)
        train, test = splits["train"], splits["test"]
        assert test and all(r.metadata["hops"] == 2 for r in test)
        train_facts = _one_hop_facts(train)
        # No test question (or prompt) is in train, and no record is duplicated.
        assert not {r.prompt for r in train} & {r.prompt for r in test}
        assert (
            len({r.id for r in train + test})
            == len({r.prompt for r in train + test})
            == len(train + test)
        )
        # Every fact on every test chain is a 1-hop training question ...
        for r in test:
            assert set(r.metadata["chain"]) <= train_facts, r.metadata["chain"]
        # ... and train holds every fact of the KB as a 1-hop question, each once.
        kb = knowledge_base(seed, **{k: v for k, v in params.items()})
        assert train_facts == {fact_text((s, rel, o)) for (s, rel), o in kb.facts.items()}
        assert sum(r.metadata["hops"] == 1 for r in train) == len(kb.facts)
        # Train also teaches the 2-hop format on other people's compositions.
        two_hop_train = [r for r in train if r.metadata["hops"] == 2]
        assert len(two_hop_train) > 0.3 * len(two_hop_train + test)
        templates = {r.metadata["template"] for r in test}
        assert templates == (
            {"residence_country", "employer_city"} if params else {"residence_country"}
        )


def test_chains_prompts_solutions_and_chance() -> None:
    kb = knowledge_base(0)
    splits = SUITE.generate(seed=0)
    reward = get_reward(SUITE.reward)
    n_type = {t: len(names) for t, names in kb.entities.items()}
    for r in splits["train"] + splits["test"]:
        m = r.metadata
        assert r.prompt == f"Q: {m['question']}\nA:"
        assert m["solution"] == " " + " ".join(m["chain"]) + f" \\boxed{{{r.answer}}}"
        assert reward(m["solution"], r.answer) == qa_em(m["solution"], r.answer) == 1.0
        assert qa_f1(m["solution"], r.answer) == 1.0
        assert len(m["solution"]) + 1 <= MAX_NEW_TOKENS  # fits the documented rollout budget
        # The chain walks the KB from the question's subject to the answer.
        if m["hops"] == 1:
            path, fmt = (m["template"],), QUESTIONS[m["template"]]
        else:
            path, fmt = TEMPLATES[m["template"]]
        subject = next(
            s
            for s in kb.entities["person"] + kb.entities["city"]
            if fmt.format(s=s) == m["question"]
        )
        walked = kb.walk(subject, path)
        assert [fact_text(f) for f in walked] == m["chain"] and walked[-1][2] == r.answer
        # Chance: a uniform guess among the KB's entities of the answer's type.
        assert m["answer_type"] in ("city", "country")
        assert m["n_candidates"] == n_type[m["answer_type"]]
        assert m["chance"] == pytest.approx(1 / n_type[m["answer_type"]])
        assert m["kb"]["n_people"] == 300 and m["kb"]["seed"] == 0
    test = splits["test"]
    assert all(r.metadata["chance"] == pytest.approx(1 / 8) for r in test)  # 8 countries
    counts = Counter(r.answer for r in test)
    assert baselines(test) == pytest.approx(
        {"chance": 1 / 8, "majority": max(counts.values()) / len(test)}
    )


def test_kb_is_a_balanced_function() -> None:
    kb = knowledge_base(3, n_people=50, n_cities=20, n_countries=6)
    cities_per_country = Counter(kb.facts[(c, "city_in")] for c in kb.entities["city"])
    assert set(cities_per_country) == set(kb.entities["country"])
    assert set(cities_per_country.values()) <= {20 // 6, 20 // 6 + 1}
    assert all(kb.facts[(p, "lives_in")] in kb.entities["city"] for p in kb.entities["person"])
    assert len(set(kb.entities["person"])) == 50
    names = [n for names in kb.entities.values() for n in names]
    assert len(names) == len(set(names))  # no person shares a name with a place


def test_sizes_select_from_the_fixed_kb() -> None:
    full = SUITE.generate(seed=0)
    n_facts = sum(r.metadata["hops"] == 1 for r in full["train"])
    n_two_hop_train = len(full["train"]) - n_facts
    # n_test keeps the first held-out questions; n_train keeps all facts + the first 2-hop ones.
    assert SUITE.generate(n_test=10, seed=0)["test"] == full["test"][:10]
    part = SUITE.generate(n_train=n_facts + 7, seed=0)["train"]
    assert len(part) == n_facts + 7 and _one_hop_facts(part) == _one_hop_facts(full["train"])
    assert sum(r.metadata["hops"] == 2 for r in part) == 7
    assert SUITE.generate(n_train=0, n_test=0, seed=0) == {"train": [], "test": []}
    for bad in (
        {"n_train": n_facts - 1},
        {"n_train": n_facts + n_two_hop_train + 1},
        {"n_test": len(full["test"]) + 1},
        {"n_people": 1},
        {"n_cities": 41},
        {"n_cities": 4, "n_countries": 5},
        {"n_companies": 31},
        {"test_frac": 0},
        {"test_frac": 1.0},
    ):
        with pytest.raises(ValueError):
            SUITE.generate(seed=0, **bad)
    # The held-out share follows test_frac (the split is a hash of each question and chain).
    for frac in (0.3, 0.5):
        n_test = len(SUITE.generate(seed=0, test_frac=frac)["test"])
        assert abs(n_test / 300 - frac) < 0.08


# Measured (qwen2 hidden 128 x 2 layers, 0.57 M params; seed 0, 1 thread): SFT stops at step
# 350 (train sampled accuracy 0.71, ~130 s); held-out 2-hop EM at T=1 is 0.48, with a standard
# deviation of 0.035 over 8 sampling seeds of one evaluation (T=0.05: 0.72 +- 0.007). Seeds 1
# and 2 stop at steps 350 / 300 with held-out EM 0.38 / 0.40. Chance 0.125, majority 0.185.
NOISE_SD = 0.035


@pytest.mark.slow
def test_sft_base_composes_held_out_facts_above_chance(tmp_path: Path) -> None:
    from rlvr.config import load_config
    from rlvr.models import load_model_and_tokenizer
    from rlvr.sft import sampled_accuracy, sft

    paths = write_suite("closedbook", tmp_path / "data", seed=0)
    cfg = load_config(
        None,
        [
            "model.family=qwen2",
            "data.suite=closedbook",
            f"data.train={paths['train']}",
            f"data.test={paths['test']}",
            f"output_dir={tmp_path / 'base'}",
            "train.threads=1",
            f"rollout.max_new_tokens={MAX_NEW_TOKENS}",
            "sft.target_accuracy=0.5",
            "sft.eval_every=50",
            "sft.max_steps=600",
            "logging.progress=false",
        ],
    )
    summary = sft(cfg)
    assert summary["reached_target"], summary
    model, tok = load_model_and_tokenizer(tmp_path / "base")
    test = load_records(paths["test"])
    reward = get_reward(SUITE.reward)
    runs = [sampled_accuracy(model, tok, cfg, test, reward, seed=s) for s in (11, 22)]
    held_out = statistics.mean(runs)
    base = baselines(test)
    # Above the stronger (majority-class) baseline by over 3 noise standard deviations, and not
    # saturated: there is room left for RL.
    assert held_out > base["majority"] + 3 * NOISE_SD > base["chance"] + 3 * NOISE_SD, (runs, base)
    assert held_out < 0.9, (runs, summary)
