"""Clip-Cov (Cui et al. 2025, "The Entropy Mechanism of Reinforcement Learning for Reasoning
Language Models", arXiv 2505.22617; code: PRIME-RL/Entropy-Mechanism-of-RL, which verl 0.9.1
carries as `compute_policy_loss_clip_cov`, followed).

    A_i: GRPO's group-normalised advantage (as the paper's runs)
    cov_it = (A_i − mean_tok A) · (log π_it − mean_tok log π)     over the mini-batch's tokens,
                                                                 log π under the current policy
    candidates: mask tokens with lb < cov_it < ub that the PPO clip has not already clipped
    selected:   max(⌊ratio · Σm⌋, 1) of the candidates, drawn uniformly at random
    ℓ_it = max(−A r, −A clip(r, 1 − ε_low, 1 + ε_high)) · (0 if selected else 1)
    loss = Σ ℓ m / Σ m (token-mean, verl's default for the recipe)

Defaults from the paper and verl: clip_cov_ratio 2e-4, lb 1, ub 5, ε = 0.2 both sides.

Where we differ from verl, on purpose: verl computes the means, the count and the draw inside
each policy-loss call, i.e. per micro-batch, so the selection depends on how a mini-batch is
split. Here `loss_normalizer` makes them over the whole mini-batch (the loop passes the current
log-probs, from a no-grad pass, and the old ones: algorithms/contract.py) and returns the
selection with the normaliser, so micro-batching gives the mini-batch's gradient; for a
mini-batch of one micro-batch the two are identical (tested against verl with the same seed).
The draw uses torch's global RNG, as verl's; the loop seeds it for the hook from (run seed, step,
mini-batch), the same on every rank (algorithms/base.py), so N ranks select what one process does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from algorithms.base import Algorithm, check_shapes
from algorithms.core import agg_loss, clipped_surrogate, masked_log_ratio, masked_mean, policy_stats
from algorithms.grpo import check_clip, grpo_advantages
from algorithms.registry import register


def token_covariance(adv: torch.Tensor, logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(A − mean A)(log π − mean log π) per token [B, T], the means over mask tokens; −inf off
    the mask."""
    m = mask.bool()
    a = adv.to(logp.dtype)[:, None].expand_as(logp)
    lp = torch.where(m, logp, torch.zeros_like(logp))
    cov = (a - masked_mean(a, m)) * (lp - masked_mean(lp, m))
    return cov.masked_fill(~m, -torch.inf)


def covariance_normalizer(selected: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """The mini-batch normaliser of the two covariance methods: token count and the selection."""
    return {"tokens": mask.to(torch.get_default_dtype()).sum(), "selected": selected}


@register("clip_cov")
@dataclass
class ClipCov(Algorithm):
    """Clip-Cov (verl `clip_cov`, mini-batch selection); see the module docstring."""

    needs_groups = True  # GRPO advantages: a group of one trains nothing

    clip_ratio_low: float = 0.2
    clip_ratio_high: float = 0.2
    """ε_low / ε_high of the PPO clip."""
    clip_cov_ratio: float = 2e-4
    """Fraction of the mini-batch's tokens whose gradient is detached."""
    clip_cov_lb: float = 1.0
    clip_cov_ub: float = 5.0
    """Candidates have lb < cov < ub."""
    adv_eps: float = 1e-6

    def validate(self) -> None:
        check_clip("clip_ratio_low", self.clip_ratio_low, upper=1.0)
        check_clip("clip_ratio_high", self.clip_ratio_high)
        if not 0 < self.clip_cov_ratio <= 1:
            raise ValueError(f"clip_cov_ratio must be in (0, 1], got {self.clip_cov_ratio!r}")
        if not self.clip_cov_lb < self.clip_cov_ub:
            raise ValueError(f"clip_cov_lb must be < clip_cov_ub, got {self.clip_cov_lb} >= {self.clip_cov_ub}")

    def advantages(self, rewards: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
        return grpo_advantages(rewards, group_ids, self.adv_eps)

    def loss_normalizer(self, adv, mask, group_ids, *, logp=None, old_logp=None):
        """{"tokens": Σm, "selected": [B, T] bool} over the whole mini-batch; without log-probs
        (a caller outside the loop) nothing is selected."""
        m = mask.bool()
        if logp is None:
            return covariance_normalizer(torch.zeros_like(m), mask)
        old_logp = logp if old_logp is None else old_logp
        log_ratio = masked_log_ratio(logp, old_logp, m)
        _, low, high = clipped_surrogate(log_ratio, adv, self.clip_ratio_low, self.clip_ratio_high)
        cov = token_covariance(adv, logp.detach(), m).masked_fill(low | high, -torch.inf)
        candidates = torch.nonzero((cov > self.clip_cov_lb) & (cov < self.clip_cov_ub) & m)
        n = max(int(self.clip_cov_ratio * int(m.sum())), 1)
        selected = torch.zeros_like(m)
        if len(candidates):  # no draw when there is nothing to draw from (verl: the same)
            chosen = candidates[torch.randperm(len(candidates))[:n]]
            selected[chosen[:, 0], chosen[:, 1]] = True
        return covariance_normalizer(selected, mask)

    def policy_loss(self, logp, old_logp, adv, mask, group_ids, *, normalizer=None, ref_logp=None):
        """Stats: clipfrac_low/high (the PPO clip), approx_kl, tokens, cov_selected_frac."""
        check_shapes(logp, old_logp, adv, mask, group_ids)
        if normalizer is None:
            normalizer = self.loss_normalizer(adv, mask, group_ids, logp=logp, old_logp=old_logp)
        m = mask.bool()
        log_ratio = masked_log_ratio(logp, old_logp, m)
        loss_mat, low, high = clipped_surrogate(log_ratio, adv, self.clip_ratio_low, self.clip_ratio_high)
        keep = ~normalizer["selected"].to(m.device)
        loss = agg_loss(loss_mat * keep, m, "token-mean", normalizer["tokens"])
        stats = policy_stats(log_ratio, m, low, high)
        stats["cov_selected_frac"] = masked_mean((~keep).to(log_ratio.dtype), m).detach()
        return loss, stats
