"""REINFORCE++ with a group baseline (Hu et al. 2025, "REINFORCE++: An Efficient RLHF Algorithm
with Robustness to Both Prompt and Reward Models", https://arxiv.org/abs/2501.03262;
the "REINFORCE++-baseline" variant, verl `reinforce_plus_plus_baseline`).

    a_i = R_i - mean_g R                         group baseline (0 for a group of one)
    A_i = (a_i - μ) / sqrt(σ² + 1e-8)            whitened over the whole batch's TOKENS:
          N = Σ_i |o_i|,  μ = Σ_i |o_i| a_i / N,  σ² = Σ_i |o_i| (a_i - μ)² / (N - 1)
    ℓ_it = -min(r_it A_i, clip(r_it, 1 - ε, 1 + ε) A_i),  r = exp(logp - old_logp),  ε = 0.2
    loss = Σ_it ℓ_it m_it / Σ_it m_it   over the whole mini-batch        (token-mean)

Every token of completion i carries a_i (outcome reward, γ = 1), so whitening the [B, T]
advantage over mask tokens, as verl does, is whitening a_i with weight |o_i|. The whitening
makes A a function of the whole step's batch: the loop calls `advantages` once on the whole kept
batch (rlvr/train.py), i.e. verl's and OpenRLHF's "global batch". It needs the lengths |o_i|:
`advantages(..., *, lengths=None)` takes them and the loop passes them (algorithms/contract.py,
`advantage_lengths`); without them every completion weighs 1 (whitening over completions).

References and where they disagree:
- Advantage: verl `compute_reinforce_plus_plus_baseline_outcome_advantage` (group mean, then
  `masked_whiten`: token mean, unbiased token variance, rsqrt(σ² + 1e-8), mean shifted out),
  followed. OpenRLHF (the authors' code, `reinforce_baseline`) whitens over tokens too but with
  the population variance and rsqrt(max(σ², 1e-8)); the two differ by a factor
  sqrt(N / (N - 1)), negligible at batch scale.
- Group of one: verl keeps a = R (mean := 0); we use a = 0 as the GRPO family here (grpo.py).
  An all-equal group has a = 0 exactly. Note that the whitening's mean shift gives such rows
  A = -μ/σ, not 0, whenever the rest of the batch has μ ≠ 0 (verl and OpenRLHF alike); a batch
  whose groups are all equal (or of one) has every A = 0. verl raises for N <= 1 token; here
  σ² := 0 then (the lone token's a - μ is 0), and a batch with no token gives A = 0.
- Loss: verl's `vanilla` PPO-clipped loss, default token-mean (the paper's PPO-clip with
  ε = 0.2), without verl's dual-clip (see rloo.py). The paper's KL regulariser to a reference
  model is not implemented (no kl_coef): like the other algorithms here by default, it trains
  without a reference model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from algorithms.base import Algorithm
from algorithms.core import default_normalizer, group_all_equal, group_mean
from algorithms.grpo import check_clip
from algorithms.opo import check_lengths
from algorithms.registry import register
from algorithms.rloo import as_float, clipped_token_mean_loss


def weighted_whiten(values: torch.Tensor, weights: torch.Tensor, eps: float) -> torch.Tensor:
    """(v - μ) / sqrt(σ² + eps) with weight w_i per value (w = token counts: verl's
    masked_whiten of a per-sequence value broadcast over its tokens). N = Σ w;
    μ = Σ w v / N; σ² = Σ w (v - μ)² / (N - 1) (0 when N <= 1). N = 0 gives all zeros."""
    weights = torch.as_tensor(weights).to(values)
    n = weights.sum()
    mean = (weights * values).sum() / n.clamp(min=1)
    centred = values - mean
    var = (weights * centred**2).sum() / (n - 1).clamp(min=1)
    return centred * torch.rsqrt(var + eps) * (n > 0).to(values)


def reinforce_pp_advantages(
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    lengths: torch.Tensor | None = None,
    eps: float = 1e-8,
) -> torch.Tensor:
    """Group-mean baseline, then token-weighted whitening over the batch. [B] -> [B].

    lengths: completion lengths |o| [B]; None = every completion weighs 1.
    """
    rewards = as_float(rewards)
    centred = rewards - group_mean(rewards, group_ids)
    centred = torch.where(group_all_equal(rewards, group_ids), torch.zeros_like(centred), centred)
    weights = torch.ones_like(rewards) if lengths is None else lengths
    return weighted_whiten(centred, weights, eps)


@register("reinforce_pp")
@dataclass
class ReinforcePP(Algorithm):
    """REINFORCE++-baseline (verl `reinforce_plus_plus_baseline` + `vanilla` loss, token-mean)."""

    needs_groups = True  # group baseline: with groups of one every a_i is 0

    clip_ratio: float = 0.2
    """ε: the ratio is clipped to [1 - ε, 1 + ε] (the paper's and verl's 0.2)."""
    whiten_eps: float = 1e-8
    """Added to the batch variance inside the square root (verl masked_whiten)."""

    def validate(self) -> None:
        check_clip("clip_ratio", self.clip_ratio, upper=1.0)
        check_clip("whiten_eps", self.whiten_eps)

    def advantages(
        self,
        rewards: torch.Tensor,
        group_ids: torch.Tensor,
        *,
        lengths: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Whitened group-centred rewards; lengths |o| [B] (the loop passes them), None: 1 each."""
        rewards = as_float(rewards)
        lengths = check_lengths(rewards, lengths)
        return reinforce_pp_advantages(rewards, group_ids, lengths, self.whiten_eps)

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
