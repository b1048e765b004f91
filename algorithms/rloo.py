"""RLOO — REINFORCE Leave-One-Out (Ahmadian et al. 2024, "Back to Basics: Revisiting
REINFORCE Style Optimization for Learning from Human Feedback in LLMs",
https://arxiv.org/abs/2402.14740; Kool et al. 2019 for the estimator).

    A_i = R_i - mean_{j != i in g} R_j = n_g/(n_g - 1) · (R_i - mean_g R)    n_g = group size
    A_i = 0 for a group of one (no other completion to compare with) and for all-equal groups
    ℓ_it = -min(r_it A_i, clip(r_it, 1 - ε, 1 + ε) A_i),   r = exp(logp - old_logp),  ε = 0.2
    loss = Σ_it ℓ_it m_it / Σ_it m_it   over the whole mini-batch        (token-mean)

References and where they disagree:
- Advantage: verl `compute_rloo_outcome_advantage` (`rloo`) and its vectorised twin
  `rloo_vectorized`, followed. They disagree on a group of one: `rloo` leaves A = R (a REINFORCE
  term without baseline), `rloo_vectorized` gives 0. We give 0, as `rloo_vectorized`, and as the
  GRPO family here (grpo.py): a lone completion carries no leave-one-out signal. An all-equal
  group is set to exactly 0 (the formula's value; floating point could leave ~1e-17).
- Loss: the paper's RLOO is plain on-policy REINFORCE on the sequence; verl pairs the `rloo`
  estimator with its `vanilla` PPO-clipped loss and default `loss_agg_mode="token-mean"`,
  followed (with one update per batch, r = 1 and the clip never binds, so it is the paper's
  REINFORCE). verl's `vanilla` adds dual-clip (caps -r·A at 3|A| for A < 0); the paper and the
  rest of this package do not, and neither do we.

`clipped_token_mean_loss` is shared with reinforce_pp.py and opo.py (same loss, other advantage).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from algorithms.base import Algorithm, check_shapes
from algorithms.core import (
    agg_loss,
    clipped_surrogate,
    default_normalizer,
    group_all_equal,
    group_index,
    group_mean,
    masked_log_ratio,
    policy_stats,
)
from algorithms.grpo import check_clip
from algorithms.registry import register


def as_float(x: torch.Tensor) -> torch.Tensor:
    """x as a floating tensor (integer rewards are accepted)."""
    x = torch.as_tensor(x)
    return x if x.is_floating_point() else x.to(torch.get_default_dtype())


def rloo_advantages(rewards: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """R_i - mean of the others in its group; 0 for groups of one and all-equal groups. [B]."""
    rewards = as_float(rewards)
    inverse, counts = group_index(group_ids)
    n = counts.to(rewards.device)[inverse.to(rewards.device)].to(rewards)
    adv = (rewards - group_mean(rewards, group_ids)) * n / (n - 1).clamp(min=1)
    return torch.where(group_all_equal(rewards, group_ids), torch.zeros_like(adv), adv)


def clipped_token_mean_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    adv: torch.Tensor,
    mask: torch.Tensor,
    group_ids: torch.Tensor,
    clip_ratio: float,
    normalizer: torch.Tensor | float | None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO-clipped surrogate (symmetric ε), token-mean over the mini-batch; (loss, stats).

    `normalizer`: Σ m of the whole mini-batch (None: this call is the whole mini-batch).
    """
    check_shapes(logp, old_logp, adv, mask, group_ids)
    if normalizer is None:
        normalizer = default_normalizer(mask, "token-mean")
    log_ratio = masked_log_ratio(logp, old_logp, mask)
    loss_mat, low, high = clipped_surrogate(log_ratio, adv, clip_ratio, clip_ratio)
    loss = agg_loss(loss_mat, mask, "token-mean", normalizer)
    return loss, policy_stats(log_ratio, mask, low, high)


@register("rloo")
@dataclass
class RLOO(Algorithm):
    """RLOO (verl `rloo` estimator + `vanilla` loss, token-mean); see the module docstring."""

    needs_groups = True  # leave-one-out baseline: a group of one trains nothing

    clip_ratio: float = 0.2
    """ε: the ratio is clipped to [1 - ε, 1 + ε] (verl's default clip_ratio)."""

    def validate(self) -> None:
        check_clip("clip_ratio", self.clip_ratio, upper=1.0)

    def advantages(self, rewards: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
        return rloo_advantages(rewards, group_ids)

    def loss_normalizer(
        self, adv: torch.Tensor, mask: torch.Tensor, group_ids: torch.Tensor
    ) -> torch.Tensor:
        """Σ m: mask tokens in the whole mini-batch."""
        return default_normalizer(mask, "token-mean")

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
        return clipped_token_mean_loss(
            logp, old_logp, adv, mask, group_ids, self.clip_ratio, normalizer
        )
