"""How the update computes log-probs: per-token log-probs of sampled completions under a model at
the sampling temperature, with entropy, p(token) and Σp² for the statistics.

Two forwards give the same logits (tests): `native` (rlvr/native/forward.py; Llama/Qwen2 on CPU,
each distinct prompt run once per micro-batch) and `hf` (the transformers forward over prompt +
completion, only the completion positions through the LM head). Then one fused pass from logits
to log-probs and statistics where the CPU kernels apply, else log_softmax and a gather.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rlvr.engines import get_engine
from rlvr.native import kernels
from rlvr.native.forward import completion_logits


def use_native_forward(choice: str, module, zero_stage: int, device: torch.device) -> bool:
    """train.forward=auto|native|hf → whether the native forward scores `module`; `native` where
    it cannot apply is an error naming why. A forward, not an engine: it runs the native layers
    where the native engine runs the model (the registry's check, rlvr/engines.py), on CPU and
    whole weights only; auto = native where it applies, else hf."""
    reason = get_engine("native").why_not_model(module)
    if reason is None and zero_stage == 3:
        reason = "ZeRO stage 3 partitions the weights (gathered only inside module forwards)"
    if reason is None and device.type != "cpu":
        reason = f"it runs on CPU only (device {device})"
    if choice == "native" and reason:
        raise ValueError(
            f"train.forward=native cannot score this model: {reason}; use train.forward=hf "
            "(auto falls back to hf by itself)"
        )
    return choice == "native" or (choice == "auto" and reason is None)


class _TokenLogprobs(torch.autograd.Function):
    """log softmax(logits)[target] with the entropy and Σp² of every position (no gradient),
    through rlvr.native.kernels: one read of the [N, T, V] logits forward and one write backward,
    where log_softmax + gather + the statistics make ~5 passes and a zero-filled scatter."""

    @staticmethod
    def forward(ctx, logits, target, with_stats):
        lse, logp, entropy, collision = kernels.token_logp_forward(logits, target, with_stats)
        ctx.save_for_backward(logits, target, lse)
        if with_stats:
            ctx.mark_non_differentiable(entropy, collision)
        return logp, entropy, collision

    @staticmethod
    def backward(ctx, d_logp, *_):
        logits, target, lse = ctx.saved_tensors
        return kernels.token_logp_backward(logits, target, lse, d_logp.contiguous()), None, None


def completion_logits_of(
    model, prompt_ids, prompt_mask, completion_ids, completion_mask, native: bool, device
) -> torch.Tensor:
    """Logits [N, T, V] predicting each completion token. Position ids follow the left padding,
    so they match generation."""
    if native:
        return completion_logits(
            getattr(model, "module", model),  # the DeepSpeed engine's module
            prompt_ids.to(device),
            prompt_mask.to(device),
            completion_ids.to(device),
        )
    ids = torch.cat([prompt_ids, completion_ids], 1).to(device)
    attn = torch.cat([prompt_mask, completion_mask.long()], 1).to(device)
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    keep = completion_ids.shape[1] + 1  # the last prompt position and the completion
    return model(
        input_ids=ids, attention_mask=attn, position_ids=pos, logits_to_keep=keep
    ).logits[:, :-1]


def token_logprobs(
    logits: torch.Tensor, target: torch.Tensor, temperature: float, with_stats: bool
) -> dict[str, torch.Tensor]:
    """{"logp"} of `target` under softmax(logits / temperature); with_stats adds "entropy",
    "p_token" and "collision" (Σ_v p_v²), without gradient."""
    logits = logits.float()
    if temperature != 1.0:  # a division by 1 would still cost a pass, forward and backward
        logits = logits / temperature
    target = target.contiguous()
    if kernels.applies(logits) and target.dtype == torch.int64:  # one fused pass each way
        logp, entropy, collision = _TokenLogprobs.apply(logits, target, with_stats)
        out = {"logp": logp}
        if with_stats:
            out.update(entropy=entropy, p_token=logp.detach().exp(), collision=collision)
        return out
    logprobs = F.log_softmax(logits, -1)
    target = target.unsqueeze(-1)
    out = {"logp": logprobs.gather(-1, target).squeeze(-1)}
    if with_stats:
        with torch.no_grad():
            logp = logprobs.detach()
            probs = logp.exp().unsqueeze(-2)  # [N, T, 1, V]
            # per-position dot products as batched matmuls: no [N, T, V] product written
            out["entropy"] = -(probs @ logp.unsqueeze(-1)).flatten(-3)
            out["p_token"] = out["logp"].detach().exp()
            out["collision"] = (probs @ probs.transpose(-1, -2)).flatten(-3)  # Σ_v p_v²
    return out
