"""rlvr.rollout.episode: search episodes at the token level. The turn logic runs against a
scripted sampler (each prompt's turns in order, as token ids) and BM25 over a small corpus; the
real engines (native, hf) run the same episodes on a tiny model."""

import json

import pytest
import torch

from rlvr.config import load_config
from rlvr.models import TinySpec, build_tiny_model
from rlvr.retrieval import BM25Retriever
from rlvr.rollout import make_rollout_engine
from rlvr.rollout.base import Turn, stop_token_ids
from rlvr.rollout.episode import (
    INVALID,
    EpisodeEngine,
    cut_after_action,
    episode_stats,
    information,
    parse_action,
    scripted_segments,
)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("episode")
    docs = {"d1": '"Alder Vale"\nAlder Vale is the home town of Mira Holt.',
            "d2": '"Mira Holt"\nMira Holt was born in 1901.'}
    (root / "c.jsonl").write_text("".join(json.dumps({"id": i, "contents": c}) + "\n" for i, c in docs.items()))
    return root / "c.jsonl"


@pytest.fixture(scope="module")
def retriever(corpus):
    return BM25Retriever.open(corpus, corpus.parent / "index")


def settings(corpus, **over):
    base = {"rollout.episode.mode": "search", "rollout.episode.retriever.corpus": str(corpus),
            "rollout.max_new_tokens": 600, "rollout.episode.max_turn_tokens": 64, "rollout.max_prompt_len": 16}
    base |= over
    return load_config(None, [f"{k}={v}" for k, v in base.items()]).rollout


class Scripted:
    """A sampler whose turn t for prompt p is scripts[p][t] (its byte tokens, log-prob -0.5 each,
    cut to the budget; EOS where a script ends in "<eos>"); it records what it was asked."""

    def __init__(self, tok, scripts):
        self.tok, self.scripts, self.cursor, self.calls = tok, scripts, dict.fromkeys(scripts, 0), []
        self.eos_ids = stop_token_ids(tok)

    def extend(self, contexts, seeds, max_new_tokens, temperature, stop=()):
        self.calls.append((len(contexts), max_new_tokens, tuple(stop)))
        turns = []
        for context in contexts:
            text = self.tok.decode(context)
            prompt = next(p for p in self.scripts if text.startswith(p))
            script = self.scripts[prompt][self.cursor[prompt]]
            self.cursor[prompt] += 1
            eos = script.endswith("<eos>")
            ids = self.tok(script.removesuffix("<eos>"), add_special_tokens=False)["input_ids"]
            ids = (ids + [self.tok.eos_token_id] * eos)[:max_new_tokens]
            turns.append(Turn(ids, [-0.5] * len(ids)))
        return turns

    def sync_weights(self):
        pass

    def sleep(self):
        pass

    def close(self):
        pass


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_model("qwen2", TinySpec(max_positions=512), seed=0)


def run(tok, cfg, retriever, scripts, n=1):
    engine = EpisodeEngine(Scripted(tok, scripts), tok, cfg, retriever)
    return engine, engine.generate(list(scripts), n, list(range(len(scripts))))


def test_actions_are_parsed_and_cut_as_search_r1_does():
    assert cut_after_action("a <search>x</search> trailing <answer>y</answer>") == "a <search>x</search>"
    assert parse_action("think <search> Mira Holt </search>").content == "Mira Holt"
    assert parse_action("<answer>1901</answer>").kind == "answer"
    for bad in ("no tags", "<search>unclosed", "<search>   </search>", "<answer>x</search>"):
        assert parse_action(bad).kind == "invalid", bad


def test_a_two_hop_episode_searches_twice_and_masks_exactly_the_injected_tokens(tiny, corpus, retriever):
    _, tok = tiny
    cfg = settings(corpus, **{"rollout.episode.top_k": 1})
    turns = ["I look. <search>home town of Mira Holt</search> ignored", "<search>Mira Holt born</search>",
             "<answer>1901</answer><eos>"]
    _, roll = run(tok, cfg, retriever, {"Q1:": turns})
    info1 = "\n\n<information>Doc 1(Title: \"Alder Vale\") Alder Vale is the home town of Mira Holt.</information>\n\n"
    info2 = "\n\n<information>Doc 1(Title: \"Mira Holt\") Mira Holt was born in 1901.</information>\n\n"
    model = ["I look. <search>home town of Mira Holt</search>", "<search>Mira Holt born</search>", "<answer>1901</answer>"]
    assert roll.texts == [model[0] + info1 + model[1] + info2 + model[2]]  # cut after each tag, EOS dropped
    # token by token: 1 on the model's bytes, 0 on the injected ones, in episode order
    expected = []
    for text, by_model in ((model[0], 1), (info1, 0), (model[1], 1), (info2, 0), (model[2], 1)):
        expected += [by_model] * len(tok(text, add_special_tokens=False)["input_ids"])
    assert roll.loss_mask[0].tolist() == expected
    assert roll.completion_mask[0].tolist() == [1.0] * len(expected)
    assert torch.equal(roll.sampling_logp[0] != 0, roll.loss_mask[0].bool())  # log-probs on model tokens only
    assert {k: float(v[0]) for k, v in roll.episode.items()} == {
        "turns": 3, "searches": 2, "invalid_actions": 0, "answered": 1, "empty_results": 0,
        "truncated_queries": 0, "injected_tokens": len(info1) + len(info2)}
    assert not roll.truncated[0]


def test_malformed_turns_empty_and_huge_queries_are_handled_and_counted(tiny, corpus, retriever):
    _, tok = tiny
    cfg = settings(corpus, **{"rollout.episode.max_turns": 3, "rollout.episode.max_query_chars": 100,
                              "rollout.max_new_tokens": 2000, "rollout.episode.max_turn_tokens": 200})
    huge = "<search>" + "Mira " * 20_000 + "</search>"  # 100 KB: cut to the turn budget, no tag left
    scripts = {
        "A:": ["no action here", "<search></search>", "<answer>x</answer>"],
        "B:": ["<search>zyxxy qwrtp</search>", "<search>" + "Mira " * 30 + "</search>", "still nothing"],
        "C:": [huge, "<stop<eos>"],
    }
    _, roll = run(tok, cfg, retriever, scripts)
    a, b, c = ({k: float(v[i]) for k, v in roll.episode.items()} for i in range(3))
    assert (a["turns"], a["invalid_actions"], a["searches"], a["answered"]) == (3, 2, 0, 1)
    assert roll.texts[0] == "no action here" + INVALID + "<search></search>" + INVALID + "<answer>x</answer>"
    assert (b["turns"], b["searches"], b["empty_results"], b["truncated_queries"], b["invalid_actions"],
            b["answered"]) == (3, 2, 1, 1, 1, 0)
    assert "<information>No results.</information>" in roll.texts[1]
    assert roll.texts[1].endswith("</information>\n\nstill nothing")  # the last turn injects nothing
    # the 100 KB query is cut at the turn budget (200 tokens), so it is an invalid turn; the
    # model then stops (EOS) without an action, which ends the episode
    assert (c["turns"], c["invalid_actions"], c["searches"], c["answered"]) == (2, 2, 0, 0)
    assert int(roll.loss_mask[2].sum()) == 200 + len("<stop") + 1
    stats = episode_stats(roll)
    assert stats["episode/answer_rate"] == pytest.approx(1 / 3)
    assert stats["episode/invalid_actions"] == pytest.approx(5 / 3)
    assert 0 < stats["episode/injected_frac"] < 1
    assert not roll.truncated.any()


def test_the_token_budget_covers_the_whole_episode(tiny, corpus, retriever):
    _, tok = tiny
    # 80 tokens: the first turn (39 tokens) fits, its passage block (~90) does not: truncated there
    cfg = settings(corpus, **{"rollout.max_new_tokens": 80, "rollout.episode.max_turn_tokens": 64})
    engine, roll = run(tok, cfg, retriever, {"Q:": ["<search>home town of Mira Holt</search>", "<answer>x</answer>"]})
    assert roll.truncated.tolist() == [True]
    assert roll.texts == ["<search>home town of Mira Holt</search>"]
    assert engine.inner.calls == [(1, 64, ("</search>", "</answer>"))]
    # a turn never asks for more than the room the episode has left
    cfg = settings(corpus, **{"rollout.max_new_tokens": 40, "rollout.episode.max_turn_tokens": 64})
    engine, roll = run(tok, cfg, retriever, {"Q:": ["x" * 100]})
    assert engine.inner.calls[0][1] == 40 and roll.lengths.tolist() == [40.0] and roll.truncated.tolist() == [True]


def test_sft_traces_inject_what_an_episode_injects(corpus, retriever):
    cfg = settings(corpus, **{"rollout.episode.top_k": 1})
    segments = scripted_segments([("search", "Mira Holt born"), ("answer", "1901")], retriever, cfg.episode)
    passages = retriever.search(["Mira Holt born"], 1)[0]
    assert segments == [("<search>Mira Holt born</search>", True), (information(passages, cfg.episode), False),
                        ("<answer>1901</answer>", True)]


@pytest.mark.parametrize("engine", ["native", "hf"])
def test_real_engines_run_episodes_deterministically(tiny, corpus, engine):
    model, tok = tiny
    cfg = settings(corpus, **{"rollout.engine": engine, "rollout.max_new_tokens": 200,
                              "rollout.episode.max_turn_tokens": 24, "rollout.episode.max_turns": 3})
    sampler = make_rollout_engine(cfg, model, tok)
    assert isinstance(sampler, EpisodeEngine)
    first = sampler.generate(["Q: a", "Q: bb"], 2, [5, 6])
    again = sampler.generate(["Q: a", "Q: bb"], 2, [5, 6])
    assert torch.equal(first.completion_ids, again.completion_ids) and first.texts == again.texts
    assert torch.equal(first.sampling_logp, again.sampling_logp)
    assert (first.loss_mask <= first.completion_mask).all() and (first.episode["turns"] >= 1).all()
    if engine == "native":  # a row's episode does not depend on the rest of its batch
        alone = sampler.generate(["Q: bb"], 2, [6])
        n = int(alone.lengths[0])
        assert torch.equal(alone.completion_ids[0, :n], first.completion_ids[2, :n])
