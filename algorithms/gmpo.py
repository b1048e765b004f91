"""GMPO — Geometric-Mean Policy Optimization (Zhao et al. 2025, https://arxiv.org/abs/2507.20673;
code github.com/callsys/GMPO; verl `compute_policy_loss_geo_mean`, loss_mode `geo_mean`).

    A_i = (R_i - mean_g R) / (std_g R + 1e-6)              GRPO advantage (grpo_advantages)
    z_it = log r_it = logp - old_logp
    ẑ_it = sgn(A_i) · min(sgn(A_i) z_it, sgn(A_i) clip(z_it, -ε_low, ε_high))   ε_low = ε_high = 0.4
         = min(z, ε_high) for A > 0,  max(z, -ε_low) for A < 0,  0 for A = 0
    ρ_i = exp( (1/|o_i|) Σ_t m_it ẑ_it )                   geometric mean of the clipped ratios
    loss = (1/N) Σ_i -A_i ρ_i                               N = completions in the mini-batch

i.e. token-level clipping in log space (ratios kept in (e^-0.4, e^0.4) on the side the
advantage pushes; the other side is unclipped, PPO's one-sided trust region), then the
geometric mean of the token ratios per sequence, then the sign by the advantage. Gradient:
∂loss/∂logp_it = -A_i ρ_i / (|o_i| N) on tokens whose clip is inactive, 0 on clipped ones.

Followed: verl's `compute_policy_loss_geo_mean` (adapted by the GMPO authors from their code),
value for value. The paper's objective (Eq. for J_GMPO with sgn(A) exponents) is the same.
- Defaults: ε_low = ε_high = 0.4 in log space, the paper's "(e^-0.4, e^0.4)" (Sec. 4) and verl's
  GMPO example (clip_ratio_low = clip_ratio_high = 0.4). Both are log-space bounds here, not
  ratio bounds as in PPO.
- Aggregation: one term per sequence, averaged over the completions (seq-mean-token-mean with
  the per-sequence loss broadcast over its tokens). N counts completions with >= 1 mask token,
  as GRPO here; verl's `torch.mean(pg_losses)` divides by every row B (an empty row adds 0). Equal
  when no completion is empty; otherwise verl's loss = ours · N / B (tested).
- |o_i|: verl divides by |o_i| + 1e-8, here by max(|o_i|, 1) (a relative 1e-8 apart).
- Numerics: z is masked and clamped to ±20 before use (`masked_log_ratio`); verl leaves the clamp
  commented out. They differ only past |z| = 20.
- Stats: clipfrac_high = tokens with z > ε_high and A > 0, clipfrac_low = z < -ε_low and A < 0
  (the clip changes the value and zeroes the gradient). verl counts any z outside
  [-ε_low, ε_high] with A > 0 (resp. < 0), including tokens on the unclipped side, so its
  pg_clipfrac / pg_clipfrac_lower are >= ours.
- No KL term (verl's loss has none; the paper's recipe sets no KL).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from algorithms.base import Algorithm, check_shapes
from algorithms.core import agg_loss, default_normalizer, masked_log_ratio, policy_stats
from algorithms.grpo import check_clip, grpo_advantages
from algorithms.registry import register


def clip_log_ratio_by_advantage(
    log_ratio: torch.Tensor, adv: torch.Tensor, clip_low: float, clip_high: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ẑ = min(z, ε_high) where A > 0, max(z, -ε_low) where A < 0, 0 where A = 0. [B, T].

    Returns (ẑ, clipped_low, clipped_high): clipped_low = z < -ε_low with A < 0, clipped_high =
    z > ε_high with A > 0 (the tokens whose value the clip changes; their gradient is 0).
    """
    a = adv.to(log_ratio.dtype)[:, None].expand_as(log_ratio)
    pos, neg = a > 0, a < 0
    z_hat = torch.where(
        pos,
        log_ratio.clamp(max=clip_high),
        torch.where(neg, log_ratio.clamp(min=-clip_low), torch.zeros_like(log_ratio)),
    )
    return z_hat, neg & (log_ratio < -clip_low), pos & (log_ratio > clip_high)


@register("gmpo")
@dataclass
class GMPO(Algorithm):
    """GMPO (verl `geo_mean`, the authors' adaptation); see the module docstring."""

    needs_groups = True  # group-relative advantages: a group of one trains nothing

    clip_ratio_low: float = 0.4
    """ε_low, in log space: for A < 0 a token's log-ratio is clipped below at -ε_low (r >= e^-ε)."""
    clip_ratio_high: float = 0.4
    """ε_high, in log space: for A > 0 a token's log-ratio is clipped above at ε_high (r <= e^ε)."""
    adv_eps: float = 1e-6
    """Added to the group std before dividing."""

    def validate(self) -> None:
        check_clip("clip_ratio_low", self.clip_ratio_low)
        check_clip("clip_ratio_high", self.clip_ratio_high)
        check_clip("adv_eps", self.adv_eps)

    def advantages(self, rewards: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
        return grpo_advantages(rewards, group_ids, self.adv_eps)

    def loss_normalizer(
        self, adv: torch.Tensor, mask: torch.Tensor, group_ids: torch.Tensor
    ) -> torch.Tensor:
        """N: completions in the mini-batch with at least one mask token."""
        return default_normalizer(mask, "seq-mean-token-mean")

    def policy_loss(
        self,
        logp: torch.Tensor,
        old_logp: torch.Tensor,
        adv: torch.Tensor,
        mask: torch.Tensor,
        group_ids: torch.Tensor,
        *,
        normalizer: torch.Tensor | float | None = None,
        ref_logp: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Stats: clipfrac_low/high, approx_kl, tokens."""
        check_shapes(logp, old_logp, adv, mask, group_ids)
        if normalizer is None:
            normalizer = self.loss_normalizer(adv, mask, group_ids)
        log_ratio = masked_log_ratio(logp, old_logp, mask)
        z_hat, low, high = clip_log_ratio_by_advantage(
            log_ratio, adv, self.clip_ratio_low, self.clip_ratio_high
        )
        m = mask.to(log_ratio.dtype)
        seq_ratio = torch.exp((z_hat * m).sum(-1) / m.sum(-1).clamp(min=1))  # ρ_i, [B]
        seq_loss = -adv.to(log_ratio.dtype) * seq_ratio
        # One term per sequence: broadcast over its tokens, seq-mean-token-mean gives it back.
        loss_mat = seq_loss[:, None].expand_as(log_ratio)
        loss = agg_loss(loss_mat, mask, "seq-mean-token-mean", normalizer)
        return loss, policy_stats(log_ratio, mask, low, high)
