"""Dr.GRPO — GRPO Done Right (Liu et al. 2025, "Understanding R1-Zero-Like Training",
https://arxiv.org/abs/2503.20783).

    A_i = R_i - mean_g R                                  no std division
    ℓ_it = -min(r_it A_i, clip(r_it, 1 - ε, 1 + ε) A_i)  (as GRPO, no KL)
    loss = Σ_i Σ_t ℓ_it m_it / (B · L)                   B = completions in the mini-batch
                                                           (with a mask token),
                                                           L = max_new_tokens (a constant)

References and where they disagree:
- Followed: the authors' oat learner (`masked_sum(..., constant_normalizer=generate_max_length)`
  then a mean over the batch) and TRL `loss_type="dr_grpo"` (`sum / (B * max_completion_length)`).
- verl's `seq-mean-token-sum-norm` divides by L only (no 1/B) and takes L from the padded
  tensor width, not the budget: a constant factor B, and a length that changes with padding.
  Using the bound generation budget keeps the denominator the same constant every step.
- Advantage: verl's GRPO estimator with `norm_adv_by_std_in_grpo=False`; a group of one gets
  A = 0 here (verl: A = R, see grpo.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from algorithms.base import Algorithm, check_shapes
from algorithms.core import agg_loss, clipped_surrogate, group_mean, masked_log_ratio, policy_stats
from algorithms.grpo import check_clip
from algorithms.registry import register


@register("dr_grpo")
@dataclass
class DrGRPO(Algorithm):
    """Dr.GRPO (oat / TRL loss_type="dr_grpo"); needs `bind` (L = max_new_tokens)."""

    needs_groups = True  # group-relative advantages: a group of one trains nothing

    clip_ratio: float = 0.2
    """ε: the ratio is clipped to [1 - ε, 1 + ε]."""

    def validate(self) -> None:
        check_clip("clip_ratio", self.clip_ratio, upper=1.0)

    def advantages(self, rewards: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
        mean = group_mean(rewards, group_ids)
        return torch.as_tensor(rewards).to(mean) - mean

    def loss_normalizer(
        self, adv: torch.Tensor, mask: torch.Tensor, group_ids: torch.Tensor
    ) -> torch.Tensor:
        """B · L: completions in the mini-batch (with a mask token: one the loop dropped, e.g. by
        the sequence mask, is not in the batch) times the generation budget."""
        rows = mask.bool().any(-1).sum()
        return (rows * self.shape.max_new_tokens).to(torch.get_default_dtype())

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
        loss_mat, low, high = clipped_surrogate(log_ratio, adv, self.clip_ratio, self.clip_ratio)
        loss = agg_loss(loss_mat, mask, "seq-mean-token-sum-norm", normalizer)
        return loss, policy_stats(log_ratio, mask, low, high)
