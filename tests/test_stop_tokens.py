"""One definition of "the turn ended" (rlvr.rollout.base.stop_token_ids): the tokenizer's EOS and
every EOS id of the model's generation config, as Qwen3 lists <|im_end|> and <|endoftext|>.
Every engine (native, hf, search episodes; vLLM in tests/test_vllm.py) ends a completion at
either id, and its completion mask ends there."""

import pytest
import torch

from rlvr.config import RolloutConfig, load_config
from rlvr.models import build_tiny_model
from rlvr.retrieval import BM25Retriever
from rlvr.rollout import HFRolloutEngine, NativeRolloutEngine
from rlvr.rollout.base import stop_token_ids
from rlvr.rollout.episode import EpisodeEngine

ALT = "<|im_end|>"
# greedy turns of two_eos_model: "Q: 5" writes one byte then <|im_end|>, "abc" five then <eos>
GREEDY = {"Q: 5": [55], "abc": [101] * 5}


def two_eos_model():
    """A tiny Qwen2 whose generation config ends a turn at <eos> and at <|im_end|>, both likely:
    each one's output row is a copy of a byte token the sharpened model loops on (×1.05), so a
    sampled row ends at either and the greedy turns of GREEDY end at one each."""
    model, tok = build_tiny_model("qwen2", seed=1, extra_eos=(ALT,))
    alt = tok.convert_tokens_to_ids(ALT)
    with torch.no_grad():
        model.model.norm.weight.mul_(4)
        W = model.lm_head.weight  # tied to the input embeddings: an EOS is never fed back
        W[alt] = 1.05 * W[96]
        W[tok.eos_token_id] = 1.05 * W[157]
    return model, tok, alt


def check_turn_ends(ids, mask, truncated, ends: set[int], pad: int | None = None):
    """Each row's mask ends at its first stop token, or covers the whole budget with none;
    returns which stop token ended each finished row."""
    seen = []
    for row, m, cut in zip(ids.tolist(), mask, truncated.tolist(), strict=True):
        n = int(m.sum())
        assert m[:n].all() and not m[n:].any()
        assert not ends & set(row[: n - 1]), row  # nothing before the end is a stop token
        if cut:
            assert n == len(row) and row[-1] not in ends
        else:
            assert row[n - 1] in ends, row
            seen.append(row[n - 1])
            if pad is not None:
                assert set(row[n:]) <= {pad}  # the row stopped there
    return seen


def test_the_stop_tokens_are_the_tokenizers_eos_and_the_generation_configs():
    model, tok, alt = two_eos_model()
    assert model.generation_config.eos_token_id == [tok.eos_token_id, alt]
    assert stop_token_ids(tok, model) == (tok.eos_token_id, alt)
    assert stop_token_ids(tok) == (tok.eos_token_id,)
    model.generation_config.eos_token_id = alt  # a single id, not a list
    assert stop_token_ids(tok, model) == (tok.eos_token_id, alt)


@pytest.mark.parametrize("engine", [NativeRolloutEngine, HFRolloutEngine], ids=["native", "hf"])
def test_every_engine_ends_a_completion_at_either_eos_id(engine):
    model, tok, alt = two_eos_model()
    sampler = engine(model, tok, RolloutConfig(max_new_tokens=32))
    roll = sampler.generate(["Q: 1+2=", "Q: 5", "abc", "Q: (3+4)*5-6+7="], 16, [0, 1, 2, 3])
    seen = check_turn_ends(roll.completion_ids, roll.completion_mask, roll.truncated,
                           {tok.eos_token_id, alt}, tok.pad_token_id)  # fmt: skip
    assert alt in seen and tok.eos_token_id in seen, seen
    print(f"{engine.__name__}: {len(seen)} of {len(roll.truncated)} rows ended ({seen.count(alt)} at <|im_end|>)")
    assert roll.truncated.any()
    # greedy turns end at the same token on every engine (vLLM: tests/test_vllm.py)
    contexts = [tok(p, add_special_tokens=False)["input_ids"] for p in GREEDY]
    turns = sampler.extend(contexts, [0, 0], 16, 0.0)
    assert [t.ids for t in turns] == [GREEDY["Q: 5"] + [alt], GREEDY["abc"] + [tok.eos_token_id]]
    assert sampler.eos_ids == (tok.eos_token_id, alt)


def test_an_episode_ends_where_the_model_stops_at_either_eos_id(tmp_path):
    model, tok, alt = two_eos_model()
    (tmp_path / "c.jsonl").write_text('{"id": "d1", "contents": "\\"A\\"\\nA is a letter."}\n')
    cfg = load_config(None, ["rollout.episode.mode=search", f"rollout.episode.retriever.corpus={tmp_path}/c.jsonl",
                             "rollout.max_new_tokens=400", "rollout.episode.max_turn_tokens=16"]).rollout  # fmt: skip
    retriever = BM25Retriever.open(tmp_path / "c.jsonl", tmp_path / "index")
    episodes = EpisodeEngine(NativeRolloutEngine(model, tok, cfg), tok, cfg, retriever)
    roll = episodes.episodes(list(GREEDY), 1, [0, 0], 0.0)
    # no action, then a stop token: the episode ends there (room for the invalid-action notice
    # and a second turn, neither comes)
    expected = [GREEDY["Q: 5"] + [alt], GREEDY["abc"] + [tok.eos_token_id]]
    for i, ids in enumerate(expected):
        assert roll.completion_ids[i, : len(ids)].tolist() == ids
        assert roll.completion_mask[i].sum() == len(ids) and roll.loss_mask[i].sum() == len(ids)
        assert {k: float(v[i]) for k, v in roll.episode.items()} == {
            "turns": 1, "searches": 0, "invalid_actions": 1, "answered": 0, "empty_results": 0,
            "truncated_queries": 0, "injected_tokens": 0}
    assert not roll.truncated.any()
