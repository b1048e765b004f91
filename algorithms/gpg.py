"""GPG — Group Policy Gradient (Chu et al. 2025, "GPG: A Simple and Strong Reinforcement
Learning Baseline for Model Reasoning", https://arxiv.org/abs/2504.02546; code:
github.com/AMAP-ML/GPG, open-r1/src/open_r1/gpg_trainer.py; verl `gpg` estimator and loss).

    A_i = α · (R_i - mean_g R) / F_norm        α = B / B_valid,  F_norm = 1 (or std_g + 1e-4)
    B = completions in the batch, B_valid = completions in groups whose rewards are not all
    equal (the paper's α = B / (B - M), M = completions of zero-variance groups); groups of one
    and all-equal groups get A = 0
    ℓ_it = -A_i · log π_θ(o_it)                no ratio, no clip, no KL, no reference model
    loss = Σ_it ℓ_it m_it / Σ_it m_it   over the whole mini-batch        (token-mean)

Zero-variance groups contribute no gradient but count in the token-mean; α rescales the batch
gradient back to that of the groups that carry signal (the paper's gradient-estimation fix).
The gradient is -A_i ∇log π / Σm, the REINFORCE gradient on-policy. The loss value is not a
surrogate of the objective (it includes the log-probabilities themselves); only its gradient
is meaningful. `old_logp` enters only the approx_kl statistic: GPG is on-policy (one update per
rollout batch, the loop's defaults); with more mini-batches or epochs it does no correction.

References and where they disagree:
- α: the paper and the authors' trainer (`adjust_gd`: loss / inverse_alpha, inverse_alpha =
  valid groups / groups, i.e. B_valid / B with equal group sizes), followed, applied to A as
  verl does (the same gradient). verl's `compute_gpg_outcome_advantage` instead uses
  α = B / count_nonzero(R) (completions with a non-zero *reward*, not groups with non-zero
  std); with 0/1 rewards that is B / #correct. Not followed: it is not the paper's correction.
  The authors also regenerate until valid groups are ≥ β_th of the batch (`min_inverse_alpha`,
  0.5 in their train.sh); not reproduced (the loop cannot keep a mix of refilled valid and
  original invalid groups).
- F_norm: the paper's best setting and the authors' train.sh use F_norm = 1
  (`scale_rewards False`), followed (`norm_by_std=False`); `norm_by_std=True` divides by the
  unbiased group std + 1e-4 as the authors' code does. verl's estimator never divides by the
  std (its `f_norm` is a constant 1).
- Group of one: verl keeps mean 0, so A = α·R; we give 0, as the GRPO family here (grpo.py).
- Loss: verl `compute_policy_loss_gpg` (-log_prob · A, agg_loss token-mean) and the authors'
  trainer (-per_token_logps · A, Σ / Σ completion_mask), followed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from algorithms.base import Algorithm, check_shapes
from algorithms.core import (
    agg_loss,
    default_normalizer,
    group_all_equal,
    group_mean,
    group_std,
    masked_log_ratio,
    policy_stats,
)
from algorithms.grpo import check_clip
from algorithms.registry import register
from algorithms.rloo import as_float


def gpg_advantages(
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    *,
    alpha_correction: bool = True,
    norm_by_std: bool = False,
    adv_eps: float = 1e-4,
) -> torch.Tensor:
    """α (R - mean_g) / F_norm over the batch given; 0 for groups of one / all-equal. [B]."""
    rewards = as_float(rewards)
    invalid = group_all_equal(rewards, group_ids)
    adv = rewards - group_mean(rewards, group_ids)
    if norm_by_std:
        adv = adv / (group_std(rewards, group_ids) + adv_eps)
    if alpha_correction:
        n_valid = (~invalid).sum().clamp(min=1).to(rewards)
        adv = adv * (len(rewards) / n_valid)
    return torch.where(invalid, torch.zeros_like(adv), adv)


@register("gpg")
@dataclass
class GPG(Algorithm):
    """GPG (paper + AMAP-ML/GPG trainer; verl `gpg` loss); see the module docstring."""

    needs_groups = True  # group-mean baseline: a group of one trains nothing

    alpha_correction: bool = True
    """Scale A by α = B / B_valid (the paper's gradient correction; authors' `adjust_gd`)."""
    norm_by_std: bool = False
    """F_norm = group std + adv_eps instead of 1 (the authors' `scale_rewards`; off in the
    paper's best setting)."""
    adv_eps: float = 1e-4
    """Added to the group std when norm_by_std (the authors' code)."""

    def validate(self) -> None:
        check_clip("adv_eps", self.adv_eps)

    def advantages(self, rewards: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
        return gpg_advantages(
            rewards,
            group_ids,
            alpha_correction=self.alpha_correction,
            norm_by_std=self.norm_by_std,
            adv_eps=self.adv_eps,
        )

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
        """ℓ = -A·logp, token-mean. Stats: clipfrac_low/high (always 0: nothing is clipped),
        approx_kl (k3 to old_logp), tokens."""
        check_shapes(logp, old_logp, adv, mask, group_ids)
        if normalizer is None:
            normalizer = self.loss_normalizer(adv, mask, group_ids)
        dtype = torch.promote_types(logp.dtype, torch.float32)
        m = mask.bool()
        # mask before use: padding may hold -inf/NaN log-probs (no exp here, but -A·(-inf)·0
        # would still be NaN); torch.where routes a zero gradient to them
        masked_logp = torch.where(m, logp.to(dtype), 0.0)
        loss_mat = -adv.to(dtype)[:, None] * masked_logp
        loss = agg_loss(loss_mat, mask, "token-mean", normalizer)
        log_ratio = masked_log_ratio(logp.detach(), old_logp, mask)
        none = torch.zeros_like(m)
        return loss, policy_stats(log_ratio, mask, none, none)
