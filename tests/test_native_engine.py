"""The native CPU decoder samples exactly from the policy: its sampling log-probs equal a
teacher-forced transformers forward (with transformers' own top-p warper) on the same tokens."""

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, LlamaConfig
from transformers.generation.logits_process import TopPLogitsWarper

from rlvr.config import RolloutConfig
from rlvr.models import build_tiny_model, build_tokenizer
from rlvr.native_engine import NativeRolloutEngine, sample_tokens, unsupported_reason
from rlvr.rollout import HFRolloutEngine, make_rollout_engine

PROMPTS = ["Q: 1+2=", "Q: 97-53-5=", "x", "Q: (3+4)*5-6+7="]  # different lengths: left padding


def gqa_llama_with_biases():
    """Grouped-query attention (4 query heads over 2 KV heads) with attention and MLP biases."""
    tok = build_tokenizer()
    config = LlamaConfig(
        vocab_size=320, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=128, max_position_embeddings=128,
        attention_bias=True, mlp_bias=True, pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id, tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():  # non-zero biases, so a dropped bias would show
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.5)
    return model, tok


def teacher_forced_logp(model, roll, temperature, top_p):
    ids = torch.cat([roll.prompt_ids, roll.completion_ids], 1)
    attn = torch.cat([roll.prompt_mask, roll.completion_mask.long()], 1)
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=attn, position_ids=pos).logits
    logits = logits[:, roll.prompt_ids.shape[1] - 1 : -1].float() / temperature
    if top_p < 1:
        warp = TopPLogitsWarper(top_p)
        logits = torch.stack([warp(None, logits[:, t]) for t in range(logits.shape[1])], 1)
    logp = F.log_softmax(logits, -1).gather(-1, roll.completion_ids.unsqueeze(-1)).squeeze(-1)
    return logp * roll.completion_mask


@pytest.mark.parametrize(
    "make_model",
    [lambda: build_tiny_model("qwen2", seed=1), lambda: build_tiny_model("llama", seed=2),
     gqa_llama_with_biases],
    ids=["qwen2", "llama", "llama-gqa-bias"],
)
@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.7, 0.9)])
def test_sampling_logp_equals_teacher_forced_forward(make_model, temperature, top_p):
    model, tok = make_model()
    cfg = RolloutConfig(max_new_tokens=24, temperature=temperature, top_p=top_p)
    roll = NativeRolloutEngine(model, tok, cfg).generate(PROMPTS, 8, seed=3)
    assert roll.completion_ids.shape[0] == len(PROMPTS) * 8
    expected = teacher_forced_logp(model, roll, temperature, top_p)
    assert (roll.sampling_logp - expected).abs().max() < 1e-5
    assert roll.completion_mask.sum() > 0 and torch.isfinite(roll.sampling_logp).all()


def test_bf16_weights_stay_close_to_fp32():
    model, tok = build_tiny_model("qwen2", seed=1)
    roll = NativeRolloutEngine(model, tok, RolloutConfig(max_new_tokens=24), bf16=True).generate(
        PROMPTS, 8, seed=3
    )
    diff = (roll.sampling_logp - teacher_forced_logp(model, roll, 1.0, 1.0)).abs().max()
    assert 0 < diff < 0.05  # bf16 projections: not exact, but close (measured 0.005)


def test_rows_stop_at_eos_and_pad_after():
    model, tok = build_tiny_model("qwen2", seed=1)
    with torch.no_grad():  # make EOS likely so rows finish at different lengths
        model.lm_head.weight[tok.eos_token_id] += 0.3 * model.model.embed_tokens.weight.mean(0)
        model.model.norm.weight.mul_(4)
    roll = NativeRolloutEngine(model, tok, RolloutConfig(max_new_tokens=32)).generate(
        PROMPTS, 8, seed=0
    )
    ids, mask = roll.completion_ids, roll.completion_mask.bool()
    finished = ~roll.truncated
    assert 0 < finished.sum() < len(ids), "the seed should give both finished and truncated rows"
    for row, m, done in zip(ids, mask, finished, strict=True):
        n = int(m.sum())
        if done:
            assert row[n - 1] == tok.eos_token_id and (row[n:] == tok.pad_token_id).all()
            assert (row[: n - 1] != tok.eos_token_id).all()
        else:
            assert n == len(row) and (row != tok.eos_token_id).all()


def test_same_seed_same_rollouts_and_seeds_differ():
    model, tok = build_tiny_model("llama", seed=0)
    engine = NativeRolloutEngine(model, tok, RolloutConfig(max_new_tokens=16))
    a, b, c = (engine.generate(PROMPTS, 4, seed=s) for s in (5, 5, 6))
    assert torch.equal(a.completion_ids, b.completion_ids) and a.texts == b.texts
    assert not torch.equal(a.completion_ids, c.completion_ids)


def test_inverse_cdf_sampler_matches_the_distribution():
    torch.manual_seed(0)
    probs = torch.tensor([0.5, 0.25, 0.15, 0.1, 0.0])
    logits = probs.log().expand(40_000, -1)
    tokens, logp = sample_tokens(logits, top_p=1.0)
    freq = torch.bincount(tokens, minlength=5).float() / len(tokens)
    # 4 standard errors of a 40k-sample frequency is <= 0.01
    assert torch.allclose(freq, probs, atol=0.01) and freq[4] == 0
    assert torch.allclose(logp, probs.log()[tokens])
    # top-p 0.7: the nucleus is {0, 1} (0.5 + 0.25 >= 0.7), renormalised to 2/3, 1/3
    tokens, logp = sample_tokens(logits, top_p=0.7)
    freq = torch.bincount(tokens, minlength=5).float() / len(tokens)
    assert torch.allclose(freq, torch.tensor([2 / 3, 1 / 3, 0, 0, 0]), atol=0.01)
    assert torch.allclose(logp.exp(), torch.where(tokens == 0, 2 / 3, 1 / 3))


def test_auto_picks_native_where_it_applies_and_hf_elsewhere():
    cfg = RolloutConfig()
    qwen, tok = build_tiny_model("qwen2")
    gpt2, _ = build_tiny_model("gpt2")
    assert isinstance(make_rollout_engine(cfg, qwen, tok), NativeRolloutEngine)
    assert isinstance(make_rollout_engine(cfg, gpt2, tok), HFRolloutEngine)
    assert isinstance(make_rollout_engine(RolloutConfig(engine="hf"), qwen, tok), HFRolloutEngine)
    assert "gpt2" in unsupported_reason(gpt2)
    with pytest.raises(ValueError, match="native decoder cannot run .*gpt2.*use rollout.engine=hf / eval.backend=hf"):
        make_rollout_engine(RolloutConfig(engine="native"), gpt2, tok)


def test_lora_model_falls_back_to_hf():
    from peft import LoraConfig, get_peft_model

    model, tok = build_tiny_model("qwen2")
    lora = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM"))
    assert "LoRA" in unsupported_reason(lora)
    assert isinstance(make_rollout_engine(RolloutConfig(), lora, tok), HFRolloutEngine)
