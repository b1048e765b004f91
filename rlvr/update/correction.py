"""Rollout/trainer mismatch correction, applied by the loop to every algorithm's loss.

The rollout engine samples from π_rollout (vLLM's kernels, often bf16); the trainer scores the
same tokens as π_old. They are the same policy in exact arithmetic and differ in practice (bf16
vLLM vs the trainer: far more than the ~1e-6 of the CPU engines), which biases the policy
gradient. Two corrections, as verl's rollout_correction:

    token-level truncated importance sampling (TIS):  w_t = min(π_old(y_t) / π_rollout(y_t), C)
        each token's gradient is scaled by w_t (C = correction.tis_cap, 2 as verl)
    sequence-level masking:  a completion whose geometric-mean ratio
        exp(mean_t log π_old/π_rollout) leaves [low, high] is dropped from the update
        (its mask is zero, so it leaves the normaliser too)

Applied through the mask and through `scale_gradient` on the current log-probs, so no
algorithm needs to know: the loss values the algorithm computes are unchanged, its gradient is
the weighted one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class Correction:
    weights: torch.Tensor | None  # [N, T] token gradient weights (None: TIS off)
    keep: torch.Tensor  # [N] bool: completions that stay in the update
    stats: dict[str, float]


def mismatch_correction(
    old_logp: torch.Tensor,
    rollout_logp: torch.Tensor,
    mask: torch.Tensor,
    tis_cap: float | None,
    seq_band: tuple[float, float] | None,
) -> Correction:
    """Weights and kept rows from the trainer's (old) and the engine's log-probs [N, T] of the
    sampled tokens; `mask` [N, T] marks them. tis_cap None: no token weights; seq_band None:
    no sequence masking."""
    m = mask > 0
    log_ratio = torch.where(m, old_logp - rollout_logp, torch.zeros_like(old_logp))
    tokens = m.sum().clamp(min=1)
    stats = {"correction/log_ratio_abs_mean": float(log_ratio.abs().sum() / tokens)}
    weights = None
    if tis_cap is not None:
        # |log r| clamped at 20 before exp, as the algorithms' ratios (algorithms/core.py)
        ratio = torch.where(m, log_ratio.clamp(-20, 20).exp(), torch.ones_like(log_ratio))
        weights = ratio.clamp(max=tis_cap)
        stats["correction/tis_weight_mean"] = float(weights[m].sum() / tokens)
        stats["correction/tis_truncated_frac"] = float((ratio[m] > tis_cap).sum() / tokens)
    keep = torch.ones(len(mask), dtype=torch.bool, device=mask.device)
    if seq_band is not None:
        low, high = seq_band
        lengths = m.sum(-1)
        geo = log_ratio.sum(-1) / lengths.clamp(min=1)
        keep = (geo >= math.log(low)) & (geo <= math.log(high)) | (lengths == 0)
        stats["correction/seq_masked_frac"] = float((~keep).float().mean())
    return Correction(weights, keep, stats)


def scale_gradient(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x's value, exactly, with its gradient scaled by w (elementwise): x.detach() + w·(x − x.detach())."""
    frozen = x.detach()
    return frozen + w * (x - frozen)
