"""rlvr.rollout.episode: search episodes at the token level. The turn logic runs against a
scripted sampler (each prompt's turns in order, as token ids) and BM25 over a small corpus; the
real engines (native, hf) run the same episodes on a tiny model. A trained byte-level BPE, whose
tokens straddle the tags, checks the cut after a tag and the counters where one character is not
one token."""

import json

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast, Qwen2Config

from rlvr.config import load_config
from rlvr.models import TinySpec, build_tiny_model
from rlvr.retrieval import BM25Retriever
from rlvr.rollout import HFRolloutEngine, NativeRolloutEngine, make_rollout_engine
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


# ---- a BPE tokenizer whose tokens straddle the tags

@pytest.fixture(scope="module")
def bpe():
    """A byte-level BPE trained on Search-R1-shaped episodes (no pre-split, as the byte tokenizer):
    standalone "</search>" is '</search' '>', but "</search>\n\n" is '</search' '>\n' '\n'."""
    text = []
    for name, town, year in (("Mira Holt", "Alder Vale", 1901), ("Ann Berg", "Oslo", 1950), ("Tom Reed", "Lyon", 1877)):
        text += [f"I look. <search>home town of {name}</search>\n\n<information>Doc 1(Title: \"{town}\") {town} is the "
                 f"home town of {name}.</information>\n\n<answer>{town}</answer>",
                 f"<search>{name} born</search>\n\n<information>Doc 1(Title: \"{name}\") {name} was born in "
                 f"{year}.</information>\n\n<answer>{year}</answer>"]  # fmt: skip
    model = Tokenizer(models.BPE())
    model.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    model.decoder = decoders.ByteLevel()
    model.train_from_iterator(text * 20, trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<pad>", "<eos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))  # fmt: skip
    return PreTrainedTokenizerFast(tokenizer_object=model, pad_token="<pad>", eos_token="<eos>", padding_side="left")


def pieces(tok, ids):
    return [tok.decode([i]) for i in ids]


def encode(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


TURN1 = "I look. <search>home town of Mira Holt</search>\n\nignored"
CUT1 = ["I look. <search>home town of ", "Mira Holt", "</search", ">\n"]  # through the straddling token


def test_a_bpe_episode_is_cut_after_the_token_that_completes_the_tag(bpe, corpus, retriever):
    tok = bpe
    assert pieces(tok, encode(tok, "</search>")) == ["</search", ">"]
    assert pieces(tok, encode(tok, TURN1))[2:5] == ["</search", ">\n", "\n"]  # the tag's '>' merged
    cfg = settings(corpus, **{"rollout.episode.top_k": 1})
    _, roll = run(tok, cfg, retriever, {"Q:": [TURN1, "<search>Mira Holt born</search>", "<answer>1901</answer><eos>"]})
    info = [information(retriever.search([q], 1)[0], cfg.episode) for q in ("home town of Mira Holt", "Mira Holt born")]
    segments = [(encode(tok, TURN1)[:4], 1), (encode(tok, info[0]), 0), (encode(tok, "<search>Mira Holt born</search>"), 1),
                (encode(tok, info[1]), 0), (encode(tok, "<answer>1901</answer>"), 1)]  # fmt: skip
    assert pieces(tok, segments[0][0]) == CUT1
    ids = [i for seg, _ in segments for i in seg]
    assert roll.completion_ids[0].tolist() == ids  # the sampled tokens, never re-tokenized text
    assert roll.loss_mask[0].tolist() == [float(m) for seg, m in segments for _ in seg]
    assert roll.sampling_logp[0].tolist() == [-0.5 * m for seg, m in segments for _ in seg]
    # the straddling token's '\n' stays (it is the model's token); nothing after it does
    assert roll.texts == ["I look. <search>home town of Mira Holt</search>\n" + info[0] + "<search>Mira Holt born</search>"
                          + info[1] + "<answer>1901</answer>"]  # fmt: skip
    injected = len(segments[1][0]) + len(segments[3][0])
    assert injected < len(info[0]) + len(info[1])  # tokens, not characters
    assert {k: float(v[0]) for k, v in roll.episode.items()} == {
        "turns": 3, "searches": 2, "invalid_actions": 0, "answered": 1, "empty_results": 0,
        "truncated_queries": 0, "injected_tokens": injected}


def chain_model(tok, prompt: str, script: str):
    """A Qwen2 that writes `script` after `prompt`, then EOS, at any temperature: each script
    token's embedding is its own basis vector, the layers add nothing (zero output projections),
    and its successor's output row reads that vector (logit 80 against 0)."""
    chain = encode(tok, prompt)[-1:] + encode(tok, script)
    successor = dict(zip(chain[:-1], chain[1:], strict=True))
    assert len(set(chain)) == len(chain)  # one successor each
    config = Qwen2Config(vocab_size=448, hidden_size=64, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=2, intermediate_size=64, max_position_embeddings=512,
                         tie_word_embeddings=False, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        E, W = model.model.embed_tokens.weight, model.lm_head.weight
        E.zero_(), W.zero_()
        E[:, 0], W[tok.eos_token_id, 0] = 1, 10  # any other token: EOS next
        for i, (a, b) in enumerate(successor.items(), 1):
            E[a, 0], E[a, i], W[b, i] = 0, 1, 10
    return model, successor


@pytest.mark.parametrize("engine", [NativeRolloutEngine, HFRolloutEngine], ids=["native", "hf"])
def test_a_real_engine_stops_at_a_tag_inside_a_merged_token(bpe, corpus, retriever, engine):
    """The native decoder stopped only on the tag's standalone tokenization ('</search' '>'), so
    a turn that wrote '</search' '>\n' ran on to EOS; now every engine stops at that token."""
    tok = bpe
    model, successor = chain_model(tok, "Q:", TURN1)
    cfg = settings(corpus, **{"rollout.episode.top_k": 1, "rollout.max_new_tokens": 200, "rollout.episode.max_turn_tokens": 32})
    sampler = engine(model, tok, cfg)
    turn = sampler.extend([encode(tok, "Q:")], [0], 32, 1.0, ("</search>", "</answer>"))[0]
    assert pieces(tok, turn.ids) == CUT1
    roll = EpisodeEngine(sampler, tok, cfg, retriever).generate(["Q:"], 1, [0])
    info = encode(tok, information(retriever.search(["home town of Mira Holt"], 1)[0], cfg.episode))
    second = []  # turn 2 continues the chain from the passages' last token, to EOS: no action
    while (nxt := successor.get((second or info)[-1], tok.eos_token_id)) != tok.eos_token_id:
        second.append(nxt)
    second.append(tok.eos_token_id)
    ids = turn.ids + info + second
    assert roll.completion_ids[0].tolist() == ids
    assert roll.loss_mask[0].tolist() == [1.0] * len(turn.ids) + [0.0] * len(info) + [1.0] * len(second)
    assert {k: float(v[0]) for k, v in roll.episode.items()} == {
        "turns": 2, "searches": 1, "invalid_actions": 1, "answered": 0, "empty_results": 0,
        "truncated_queries": 0, "injected_tokens": len(info)}
    assert not roll.truncated[0]
