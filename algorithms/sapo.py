"""SAPO — Soft Adaptive Policy Optimization (Gao et al. 2025, Qwen team,
https://arxiv.org/abs/2511.20347; verl `compute_policy_loss_sapo`, `policy_loss.loss_mode=sapo`).

    A_i = (R_i - mean_g R) / (std_g R + 1e-6)              GRPO advantage (grpo_advantages)
    f_τ(r) = σ(τ (r - 1)) · 4 / τ                           soft gate instead of a hard clip
    τ_it = τ_pos if A_i > 0 else τ_neg                      τ_pos = 1.0, τ_neg = 1.05
    ℓ_it = -f_τ(r_it) · A_i,                                r = exp(logp - old_logp)
    loss = (1/N) Σ_i (1/|o_i|) Σ_t ℓ_it m_it                N = completions in the mini-batch
                                                             (seq-mean-token-mean)

Gradient: ∂ℓ/∂logp = -A · r · w with w = 4 σ(τ(r-1)) (1 - σ(τ(r-1))) ∈ (0, 1]: w = 1 on-policy
(r = 1, the GRPO gradient) and decays smoothly as r leaves 1, faster for larger τ, so off-policy
tokens are down-weighted instead of cut off; no token's gradient is exactly 0. The value of ℓ
at r = 1 is -2A/τ, not -A (the gate's offset; only the gradient matters).

Followed: verl's `compute_policy_loss_sapo`, which matches the paper's objective.
- τ_pos = 1.0, τ_neg = 1.05: the paper's setting (τ_neg > τ_pos: negative-advantage tokens,
  which raise the logits of every other token, are damped faster) and verl's ActorConfig
  defaults. A = 0 takes τ_neg as verl (`advantages > 0` selects τ_pos); its loss is 0 either way.
- Aggregation: seq-mean-token-mean, as the paper's 1/G Σ_i 1/|o_i| Σ_t and verl (which forces
  it for SAPO whatever `loss_agg_mode` says). N counts completions with >= 1 mask token.
- Numerics: log r is masked and clamped to ±20 before exp() (as verl).
- Stats: clipfrac_low / clipfrac_high are 0 (there is no hard clip; verl also reports 0).
  Extra: gate_weight = mean over mask tokens of w above (1 = on-policy; the soft counterpart of
  1 - clipfrac). No KL term.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from algorithms.base import Algorithm, check_shapes
from algorithms.core import (
    agg_loss,
    default_normalizer,
    masked_log_ratio,
    masked_mean,
    policy_stats,
)
from algorithms.grpo import check_clip, grpo_advantages
from algorithms.registry import register


def soft_gate(
    ratio: torch.Tensor, adv: torch.Tensor, tau_pos: float, tau_neg: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(f_τ(r), w): the gate σ(τ(r - 1))·4/τ and its gradient weight 4σ(1 - σ), τ by sign of A.

    ratio [B, T], adv [B]. w is detached (a statistic).
    """
    a = adv.to(ratio.dtype)[:, None]
    tau = torch.where(
        a > 0,
        torch.as_tensor(tau_pos, dtype=ratio.dtype, device=ratio.device),
        torch.as_tensor(tau_neg, dtype=ratio.dtype, device=ratio.device),
    )
    p = torch.sigmoid(tau * (ratio - 1.0))
    return p * (4.0 / tau), (4.0 * p * (1.0 - p)).detach()


@register("sapo")
@dataclass
class SAPO(Algorithm):
    """SAPO (paper + verl `sapo`); see the module docstring."""

    needs_groups = True  # group-relative advantages: a group of one trains nothing

    tau_pos: float = 1.0
    """τ_pos: gate temperature for tokens with A > 0 (larger = narrower trust region)."""
    tau_neg: float = 1.05
    """τ_neg: gate temperature for tokens with A <= 0."""
    adv_eps: float = 1e-6
    """Added to the group std before dividing."""

    def validate(self) -> None:
        for key in ("tau_pos", "tau_neg"):
            value = getattr(self, key)
            if not value > 0:
                raise ValueError(f"{key} must be > 0, got {value!r}")
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
        """Stats: clipfrac_low/high (always 0), approx_kl, tokens, gate_weight."""
        check_shapes(logp, old_logp, adv, mask, group_ids)
        if normalizer is None:
            normalizer = self.loss_normalizer(adv, mask, group_ids)
        log_ratio = masked_log_ratio(logp, old_logp, mask)
        gate, weight = soft_gate(torch.exp(log_ratio), adv, self.tau_pos, self.tau_neg)
        loss_mat = -gate * adv.to(gate.dtype)[:, None]
        loss = agg_loss(loss_mat, mask, "seq-mean-token-mean", normalizer)
        none = torch.zeros_like(mask, dtype=torch.bool)
        stats = policy_stats(log_ratio, mask, none, none)
        stats["gate_weight"] = masked_mean(weight, mask)
        return loss, stats
