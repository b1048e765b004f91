"""The native CPU decoder samples exactly from the policy: its sampling log-probs equal a
teacher-forced transformers forward (with transformers' own top-p warper) on the same tokens."""

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, LlamaConfig
from transformers.generation.logits_process import TopPLogitsWarper

from rlvr.config import RolloutConfig
from rlvr.models import build_tiny_model, build_tokenizer
from rlvr.native.forward import completion_logits
from rlvr.native.layers import _RMSNorm, _SwiGLU, unique_prompts
from rlvr.native.support import unsupported_reason
from rlvr.rollout import HFRolloutEngine, NativeRolloutEngine, make_rollout_engine
from rlvr.rollout.native import sample_tokens

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
    roll = NativeRolloutEngine(model, tok, cfg).generate(PROMPTS, 8, seeds=[3] * len(PROMPTS))
    assert roll.completion_ids.shape[0] == len(PROMPTS) * 8
    expected = teacher_forced_logp(model, roll, temperature, top_p)
    assert (roll.sampling_logp - expected).abs().max() < 1e-5
    assert roll.completion_mask.sum() > 0 and torch.isfinite(roll.sampling_logp).all()


def test_bf16_weights_stay_close_to_fp32():
    model, tok = build_tiny_model("qwen2", seed=1)
    roll = NativeRolloutEngine(model, tok, RolloutConfig(max_new_tokens=24), bf16=True).generate(
        PROMPTS, 8, seeds=[3] * len(PROMPTS)
    )
    diff = (roll.sampling_logp - teacher_forced_logp(model, roll, 1.0, 1.0)).abs().max()
    assert 0 < diff < 0.05  # bf16 projections: not exact, but close (measured 0.005)


def test_rows_stop_at_eos_and_pad_after():
    model, tok = build_tiny_model("qwen2", seed=1)
    with torch.no_grad():  # make EOS likely so rows finish at different lengths
        model.lm_head.weight[tok.eos_token_id] += 0.3 * model.model.embed_tokens.weight.mean(0)
        model.model.norm.weight.mul_(4)
    roll = NativeRolloutEngine(model, tok, RolloutConfig(max_new_tokens=32)).generate(
        PROMPTS, 8, seeds=list(range(len(PROMPTS)))
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
    seeds = [5, 6, 7]
    a, b, c = (engine.generate(PROMPTS[:3], 4, seeds=s) for s in (seeds, seeds, [5, 6, 8]))
    assert torch.equal(a.completion_ids, b.completion_ids) and a.texts == b.texts
    assert torch.equal(a.completion_ids[:8], c.completion_ids[:8])  # prompts 0 and 1: same seeds
    assert not torch.equal(a.completion_ids[8:], c.completion_ids[8:])


def test_a_prompts_completions_do_not_depend_on_the_rest_of_its_batch():
    """What a data-parallel run needs: a group sampled alone, or by another rank beside other
    prompts, gets the same completions from the same seed."""
    model, tok = build_tiny_model("qwen2", seed=0)
    engine = NativeRolloutEngine(model, tok, RolloutConfig(max_new_tokens=16))
    together = engine.generate(PROMPTS[:4], 4, seeds=[11, 12, 13, 14])
    for i in range(4):
        alone = engine.generate([PROMPTS[i]], 4, seeds=[11 + i])
        width = alone.completion_ids.shape[1]
        assert torch.equal(together.completion_ids[4 * i : 4 * i + 4, :width], alone.completion_ids)
        assert together.texts[4 * i : 4 * i + 4] == alone.texts


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


def teacher_forcing_batch(tok, vocab: int, seed: int = 0, repeats: int = 1, T: int = 10):
    """12 * repeats rows over 4 prompts of different lengths, each prompt 3 * repeats times and
    not adjacent, with random completions of different lengths (padding after each row's length)."""
    enc = tok(PROMPTS, padding=True, padding_side="left", return_tensors="pt")
    order = torch.tensor([0, 1, 2, 3, 2, 0, 3, 1, 1, 3, 0, 2]).repeat(repeats)
    g = torch.Generator().manual_seed(seed)
    completion = torch.randint(2, vocab, (len(order), T), generator=g)
    lengths = torch.randint(1, T + 1, (len(order),), generator=g)
    mask = (torch.arange(T) < lengths[:, None]).long()
    completion = completion.masked_fill(mask == 0, tok.pad_token_id)
    return enc.input_ids[order], enc.attention_mask[order], completion, mask


def hf_completion_logits(model, prompt_ids, prompt_mask, completion_ids, completion_mask):
    """What rlvr.update.Policy.score computes with train.forward=hf."""
    attn = torch.cat([prompt_mask, completion_mask], 1)
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    ids = torch.cat([prompt_ids, completion_ids], 1)
    T = completion_ids.shape[1]
    return model(input_ids=ids, attention_mask=attn, position_ids=pos, logits_to_keep=T + 1).logits[:, :-1]


@pytest.mark.parametrize(
    "make_model",
    [lambda: build_tiny_model("qwen2", seed=1), lambda: build_tiny_model("llama", seed=2),
     gqa_llama_with_biases],
    ids=["qwen2", "llama", "llama-gqa-bias"],
)
@pytest.mark.parametrize("width", [10, 1], ids=["T10", "T1"])
def test_native_forward_equals_transformers_in_logits_and_gradients(make_model, width):
    """The update's native forward (rows sharing a prompt share its pass) gives the transformers
    forward's log-probs and, through a weighted sum of them, the same gradient per parameter;
    also for one-token completions, where only the prompt pass runs."""
    model, tok = make_model()
    prompt_ids, prompt_mask, completion, mask = teacher_forcing_batch(
        tok, model.config.vocab_size, T=width)
    unique_ids, unique_mask, row_of = unique_prompts(prompt_ids, prompt_mask)
    assert len(unique_ids) == 4 and torch.equal(unique_ids[row_of], prompt_ids)
    assert torch.equal(unique_mask[row_of], prompt_mask)
    weights = torch.randn(mask.shape, generator=torch.Generator().manual_seed(1)) * mask

    def logp_and_grads(logits_fn):
        model.zero_grad()
        logp = F.log_softmax(logits_fn().float(), -1).gather(-1, completion[..., None]).squeeze(-1)
        (logp * weights).sum().backward()
        return logp * mask, {n: p.grad.clone() for n, p in model.named_parameters()}

    hf_logp, hf_grads = logp_and_grads(
        lambda: hf_completion_logits(model, prompt_ids, prompt_mask, completion, mask))
    native_logp, native_grads = logp_and_grads(
        lambda: completion_logits(model, prompt_ids, prompt_mask, completion))
    torch.testing.assert_close(native_logp, hf_logp, rtol=0, atol=1e-5)
    assert hf_grads.keys() == native_grads.keys()
    for name, grad in hf_grads.items():
        assert grad.abs().max() > 0, name
        torch.testing.assert_close(native_grads[name], grad, rtol=1e-4, atol=1e-5, msg=lambda m, name=name: f"{name}: {m}")


def test_native_forward_under_bf16_autocast_stays_close_to_fp32():
    model, tok = build_tiny_model("qwen2", seed=1)
    prompt_ids, prompt_mask, completion, mask = teacher_forcing_batch(tok, model.config.vocab_size)
    with torch.no_grad():
        fp32 = completion_logits(model, prompt_ids, prompt_mask, completion)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = completion_logits(model, prompt_ids, prompt_mask, completion)
    diff = ((F.log_softmax(bf16.float(), -1) - F.log_softmax(fp32, -1)).abs() * mask[..., None]).max()
    assert bf16.dtype == torch.float32 and 0 < diff < 0.05


def test_hand_written_backwards_pass_gradcheck():
    """The update forward's RMSNorm and SwiGLU backwards against finite differences (float64),
    on a non-contiguous gate-up input like the fused projection's."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 8, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(8, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w: _RMSNorm.apply(x, w, 1e-6), (x, w), atol=1e-8, rtol=1e-6)
    gate_up = torch.randn(3, 5, 12, dtype=torch.float64, generator=g)[..., 1:11].requires_grad_()
    assert torch.autograd.gradcheck(_SwiGLU.apply, (gate_up,), atol=1e-8, rtol=1e-6)


def test_native_forward_gradients_under_bf16_autocast_stay_close_to_fp32():
    model, tok = build_tiny_model("qwen2", seed=1)
    prompt_ids, prompt_mask, completion, mask = teacher_forcing_batch(tok, model.config.vocab_size)

    def grads(bf16: bool):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = completion_logits(model, prompt_ids, prompt_mask, completion)
        (F.log_softmax(logits.float(), -1).gather(-1, completion[..., None]).squeeze(-1) * mask).sum().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    fp32, bf16 = grads(False), grads(True)
    for name, grad in fp32.items():
        assert bf16[name].dtype == torch.float32
        rel = ((bf16[name] - grad).norm() / grad.norm()).item()
        assert 0 < rel < 0.05, f"{name}: relative difference {rel:.3g}"


def test_native_forward_gradients_are_bitwise_reproducible():
    """Rows of a prompt scattered over the batch: the gradient summed over them is the same bits
    on every call (metrics.jsonl must be byte-identical across runs and resumes)."""
    model, tok = build_tiny_model("qwen2", seed=1)
    prompt_ids, prompt_mask, completion, mask = teacher_forcing_batch(
        tok, model.config.vocab_size, repeats=8  # enough rows for torch to split work over threads
    )

    def grads():
        model.zero_grad()
        logits = completion_logits(model, prompt_ids, prompt_mask, completion)
        (F.log_softmax(logits, -1).gather(-1, completion[..., None]).squeeze(-1) * mask).sum().backward()
        return torch.cat([p.grad.flatten() for p in model.parameters()])

    first = grads()
    assert all(torch.equal(grads(), first) for _ in range(5))


def test_train_forward_auto_picks_native_where_it_applies():
    from rlvr.config import load_config
    from rlvr.update import Policy

    def policy(family, forward):
        model, _ = build_tiny_model(family)
        return Policy(model, load_config(None, [f"train.forward={forward}", "train.micro_batch_size=8"]))

    assert policy("qwen2", "auto").native_forward and policy("llama", "native").native_forward
    assert not policy("qwen2", "hf").native_forward
    assert not policy("gpt2", "auto").native_forward
    with pytest.raises(ValueError, match="train.forward=native cannot score .*gpt2.*use train.forward=hf"):
        policy("gpt2", "native")
