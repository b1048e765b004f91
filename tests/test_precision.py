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
