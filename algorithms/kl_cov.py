"""KL-Cov (Cui et al. 2025, arXiv 2505.22617; PRIME-RL/Entropy-Mechanism-of-RL, as verl 0.9.1's
`compute_policy_loss_kl_cov`, followed).

    A_i, cov_it: as Clip-Cov (clip_cov.py), over the mini-batch's mask tokens
    selected:  the top max(⌊ratio · Σm⌋, 1) tokens by cov
    ℓ_it = −A r + (β·|log r| if selected)        no PPO clip (verl's form)
    loss = Σ ℓ m / Σ m (token-mean)

Defaults: kl_cov_ratio 2e-4 (verl), β = 1 (the fallback of verl's function; verl's config class
defaults to 0.1: set ppo_kl_coef=0.1 to match a verl run that leaves it unset). As for Clip-Cov, the selection is made over the whole mini-batch
(verl: per policy-loss call, i.e. per micro-batch), identical for a single micro-batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from algorithms.base import Algorithm, check_shapes
from algorithms.clip_cov import covariance_normalizer, token_covariance
from algorithms.core import agg_loss, clipped_surrogate, masked_log_ratio, masked_mean, policy_stats
from algorithms.grpo import check_clip, grpo_advantages
from algorithms.registry import register


@register("kl_cov")
@dataclass
class KLCov(Algorithm):
    """KL-Cov (verl `kl_cov`, mini-batch selection); see the module docstring."""

    needs_groups = True  # GRPO advantages: a group of one trains nothing

    kl_cov_ratio: float = 2e-4
    """Fraction of the mini-batch's tokens (largest covariance) that get the KL penalty."""
    ppo_kl_coef: float = 1.0
    """β: weight of |log r| on the selected tokens."""
    adv_eps: float = 1e-6

    def validate(self) -> None:
        if not 0 < self.kl_cov_ratio <= 1:
            raise ValueError(f"kl_cov_ratio must be in (0, 1], got {self.kl_cov_ratio!r}")
        check_clip("ppo_kl_coef", self.ppo_kl_coef)

    def advantages(self, rewards: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
        return grpo_advantages(rewards, group_ids, self.adv_eps)

    def loss_normalizer(self, adv, mask, group_ids, *, logp=None):
        """{"tokens": Σm, "selected": [B, T] bool (top-k covariance)} over the whole mini-batch;
        without log-probs (a caller outside the loop) nothing is selected."""
        m = mask.bool()
        selected = torch.zeros_like(m)
        if logp is not None and m.any():
            cov = token_covariance(adv, logp.detach(), m).flatten()
            k = max(int(len(cov[m.flatten()]) * self.kl_cov_ratio), 1)
            selected.view(-1)[torch.topk(cov, k).indices] = True
        return covariance_normalizer(selected, mask)

    def policy_loss(self, logp, old_logp, adv, mask, group_ids, *, normalizer=None, ref_logp=None):
        """Stats: clipfrac_low/high (0: no clip), approx_kl, tokens, cov_selected_frac."""
        check_shapes(logp, old_logp, adv, mask, group_ids)
        if normalizer is None:
            normalizer = self.loss_normalizer(adv, mask, group_ids, logp=logp)
        m = mask.bool()
        log_ratio = masked_log_ratio(logp, old_logp, m)
        loss_mat, low, high = clipped_surrogate(log_ratio, adv, None, None)
        selected = normalizer["selected"].to(m.device)
        loss_mat = loss_mat + self.ppo_kl_coef * log_ratio.abs() * selected
        loss = agg_loss(loss_mat, m, "token-mean", normalizer["tokens"])
        stats = policy_stats(log_ratio, m, low, high)
        stats["cov_selected_frac"] = masked_mean(selected.to(log_ratio.dtype), m).detach()
        return loss, stats
