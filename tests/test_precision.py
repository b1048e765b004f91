"""bf16 autocast (train.precision=bf16, opt-in) keeps the policy loss close to fp32."""

import torch

import algorithms
from rlvr.models import TinySpec, build_tiny_model

# relative, on the GRPO loss and on mean per-token log-probs. Measured on this tiny Qwen2:
# loss 0.080029 (fp32) vs 0.080032 (bf16), 4e-5 relative; max per-token |dlogp| 0.004.
TOLERANCE = 0.02


def completion_logp(model, ids, T, bf16: bool) -> torch.Tensor:
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        logits = model(input_ids=ids, logits_to_keep=T + 1).logits
    logp = torch.log_softmax(logits[:, :-1].float(), -1)
    return logp.gather(-1, ids[:, -T:].unsqueeze(-1)).squeeze(-1)


def test_bf16_loss_within_tolerance_of_fp32():
    torch.manual_seed(0)
    model, _ = build_tiny_model("qwen2", TinySpec())
    model.eval()
    B, T = 16, 24
    ids = torch.randint(2, 258, (B, 40))
    mask = torch.ones(B, T)
    adv = torch.randn(B)
    groups = torch.arange(B) // 4
    algo = algorithms.get("grpo")
    with torch.no_grad():
        fp32 = completion_logp(model, ids, T, bf16=False)
        bf16 = completion_logp(model, ids, T, bf16=True)
    # old policy = a slightly perturbed copy of fp32, so ratios differ from 1
    old = fp32 + 0.05 * torch.randn_like(fp32)
    loss32, _ = algo.policy_loss(fp32, old, adv, mask, groups)
    loss16, _ = algo.policy_loss(bf16, old, adv, mask, groups)
    assert abs(float(loss16 - loss32)) <= TOLERANCE * abs(float(loss32)) + 1e-3, (loss32, loss16)
    assert abs(float(bf16.mean() - fp32.mean())) <= TOLERANCE * abs(float(fp32.mean()))


def test_bf16_eager_attention_gradient_matches_fp32():
    """The bf16 path (autocast + matmul attention, see use_bf16_friendly_attention) gives the
    fp32 gradient direction: per-parameter cosine similarity, measured min 0.99995."""
    from rlvr.models import use_bf16_friendly_attention

    torch.manual_seed(0)
    ids = torch.randint(2, 258, (16, 40))
    attn = torch.ones_like(ids)
    attn[:8, :5] = 0  # left padding on half the rows
    grads = []
    for bf16 in (False, True):
        model, _ = build_tiny_model("qwen2", TinySpec(), seed=0)
        if bf16:
            use_bf16_friendly_attention(model)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(input_ids=ids, attention_mask=attn, logits_to_keep=25).logits
        logp = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, ids[:, -24:, None])
        (-logp.mean()).backward()
        grads.append([p.grad.flatten() for p in model.parameters()])
    for g32, g16 in zip(*grads, strict=True):
        assert torch.nn.functional.cosine_similarity(g32, g16, dim=0) > 0.99


def test_bf16_sft_tracks_fp32_loss(math_data, tmp_path):
    from rlvr.config import load_config
    from rlvr.sft import sft

    losses = {}
    for precision in ("fp32", "bf16"):
        cfg = load_config(None, [
            "model.family=qwen2", f"data.train={math_data}/train.jsonl",
            f"output_dir={tmp_path / precision}", "sft.max_steps=60", "sft.eval_every=60",
            "sft.eval_prompts=8", f"sft.precision={precision}", "logging.progress=false",
            "train.threads=1",  # the float summation order, hence the exact losses, is fixed
        ])  # fmt: skip
        losses[precision] = sft(cfg)["history"][-1]["loss"]
    # same init, same batches, 60 steps: the two trajectories drift apart a little; measured
    # 1.217 (fp32) vs 1.241 (bf16) on the last batch, 2.0% apart; tolerance 5%
    assert abs(losses["bf16"] - losses["fp32"]) <= 0.05 * losses["fp32"], losses
