"""OPO — On-Policy RL with Optimal reward baseline (Hao et al. 2025,
https://arxiv.org/abs/2505.23585; verl `opo`, written by the authors).

    b_g = Σ_{j in g} |o_j| R_j / Σ_{j in g} |o_j|        length-weighted group baseline
    A_i = R_i - b_g                                       no std division
    A_i = 0 for a group of one and for all-equal groups
    ℓ_it = -min(r_it A_i, clip(r_it, 1 - ε, 1 + ε) A_i),  r = exp(logp - old_logp),  ε = 0.2
    loss = Σ_it ℓ_it m_it / Σ_it m_it   over the whole mini-batch        (token-mean)

b_g is the variance-minimising baseline Σ‖∇log π(o)‖² R / Σ‖∇log π(o)‖² with the paper's
approximation ‖∇log π(o)‖² ∝ |o|. OPO is exactly on-policy (one update per rollout batch:
`train.mini_batches=1`, `train.epochs=1`, the loop's defaults), so r ≡ 1 and the clip never binds.

References and where they disagree:
- Advantage: verl `compute_opo_outcome_advantage` (|o| = response_mask.sum(-1), the loop's
  `Rollouts.model_lengths`: the model's own tokens, a search episode's passages left out, as
  verl's response_mask), followed. A group of one: verl sets b = 0, so
  A = R; we give A = 0 as the GRPO family here (grpo.py). A group whose completions are all
  empty (Σ|o| = 0) is NaN in verl; here it falls back to the plain group mean (its rows carry no
  token, so it cannot change the loss).
- Loss: verl trains OPO with its default `vanilla` PPO-clipped loss and default
  `loss_agg_mode="token-mean"` (docs/algo/opo.md: only the estimator and exact on-policy
  batching change), followed, without verl's dual-clip (see rloo.py). With r = 1 both give
  loss = -mean_tokens(A) and gradient -A_i ∇log π / Σm.

Lengths: `advantages(rewards, group_ids, *, lengths=None)` takes the completion lengths |o|;
the loop passes them because the signature accepts `lengths=` (algorithms/contract.py,
`advantage_lengths`). Called without them, every completion weighs 1 (the plain group mean).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from algorithms.base import Algorithm
from algorithms.core import default_normalizer, group_all_equal, group_index, group_mean
from algorithms.grpo import check_clip
from algorithms.registry import register
from algorithms.rloo import as_float, clipped_token_mean_loss


def weighted_group_mean(
    values: torch.Tensor, weights: torch.Tensor, group_ids: torch.Tensor
) -> torch.Tensor:
    """Σ_g w v / Σ_g w per group, broadcast to [B]; a group with Σ w = 0 gets its plain mean."""
    values = as_float(values)
    weights = torch.as_tensor(weights).to(values)
    inverse, counts = group_index(group_ids)
    inv = inverse.to(values.device)
    zeros = torch.zeros(len(counts), dtype=values.dtype, device=values.device)
    wsum = zeros.index_add(0, inv, weights)
    wv = zeros.index_add(0, inv, weights * values)
    weighted = (wv / torch.where(wsum > 0, wsum, torch.ones_like(wsum)))[inv]
    return torch.where(wsum[inv] > 0, weighted, group_mean(values, group_ids))


def check_lengths(rewards: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor | None:
    """lengths as a float tensor of the rewards' shape (None stays None)."""
    if lengths is None:
        return None
    lengths = torch.as_tensor(lengths)
    if lengths.shape != torch.as_tensor(rewards).shape:
        raise ValueError(f"lengths must be [B] = {tuple(rewards.shape)}, got {tuple(lengths.shape)}")
    return lengths.to(as_float(rewards))


def opo_advantages(
    rewards: torch.Tensor, group_ids: torch.Tensor, lengths: torch.Tensor | None = None
) -> torch.Tensor:
    """R - length-weighted group mean; 0 for groups of one / all-equal groups. [B] -> [B].

    lengths: completion lengths |o| [B]; None = every completion weighs 1.
    """
    rewards = as_float(rewards)
    weights = torch.ones_like(rewards) if lengths is None else torch.as_tensor(lengths)
    adv = rewards - weighted_group_mean(rewards, weights, group_ids)
    return torch.where(group_all_equal(rewards, group_ids), torch.zeros_like(adv), adv)


@register("opo")
@dataclass
class OPO(Algorithm):
    """OPO (verl `opo` estimator + `vanilla` loss, token-mean); see the module docstring."""

    needs_groups = True  # group baseline: a group of one trains nothing

    clip_ratio: float = 0.2
    """ε: the ratio is clipped to [1 - ε, 1 + ε] (verl's default; inert on-policy, r = 1)."""

    def validate(self) -> None:
        check_clip("clip_ratio", self.clip_ratio, upper=1.0)

    def advantages(
        self,
        rewards: torch.Tensor,
        group_ids: torch.Tensor,
        *,
        lengths: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """R - Σ|o|R/Σ|o| per group; lengths |o| [B] (the loop passes them), None: weights 1."""
        return opo_advantages(as_float(rewards), group_ids, check_lengths(rewards, lengths))

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
