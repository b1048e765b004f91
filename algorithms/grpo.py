"""GRPO — Group Relative Policy Optimization (Shao et al. 2024, https://arxiv.org/abs/2402.03300).

    A_i = (R_i - mean_g R) / (std_g R + 1e-6)           unbiased std over the prompt's group
    ℓ_it = -min(r_it A_i, clip(r_it, 1 - ε, 1 + ε) A_i) + β·k3_it,   r = exp(logp - old_logp)
    k3_it = exp(ref - logp) - (ref - logp) - 1         (only when β = kl_coef > 0)
    loss = (1/N) Σ_i (1/|o_i|) Σ_t ℓ_it m_it           N = completions in the mini-batch

References and where they disagree:
- Advantage: verl `compute_grpo_outcome_advantage` (unbiased torch.std, ε = 1e-6), followed.
  TRL uses ε = 1e-4; the wapo fork uses the population std and 1e-8.
- Group of one: verl sets mean = 0, std = 1, i.e. A = R (a REINFORCE term with no baseline).
  We use the formula's own value instead: mean_g = R and std := 0, so A = 0. A lone completion
  carries no group-relative signal, and the advantage then never depends on the raw reward
  scale; DAPO's filter (which drops it) and Dr.GRPO/WAPO (A = R - mean_g = 0) agree with it.
- Aggregation: the paper and TRL `loss_type="grpo"` (= verl `seq-mean-token-mean`), followed.
  verl's *default* `loss_agg_mode` is token-mean. N counts completions with >= 1 mask token:
  TRL counts all B (an empty one adds 0), verl gives NaN for an empty one; with no empty
  completion, as in practice, all three are equal.
- Clipping: plain PPO clip as in the paper and TRL. verl's `vanilla` loss adds dual-clip
  (caps -r·A at 3·|A| for A < 0); not used here.
- KL: k3 to the reference inside the per-token loss, as TRL (and verl `low_var_kl` with
  `use_kl_loss`, which clamps k3 to ±10; not clamped here). β = 0 by default, as in TRL and the
  Dr.GRPO/DAPO recipes, so no reference model is needed unless kl_coef > 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from algorithms.base import Algorithm, check_shapes
from algorithms.core import (
    agg_loss,
    clipped_surrogate,
    default_normalizer,
    group_mean,
    group_std,
    k3,
    masked_log_ratio,
    masked_mean,
    policy_stats,
)
from algorithms.registry import register


def grpo_advantages(rewards: torch.Tensor, group_ids: torch.Tensor, eps: float) -> torch.Tensor:
    """(R - mean_g) / (std_g + eps), unbiased std; a group of one gets A = 0. [B] -> [B]."""
    mean, std = group_mean(rewards, group_ids), group_std(rewards, group_ids)
    return (torch.as_tensor(rewards).to(mean) - mean) / (std + eps)


def check_clip(name: str, value: float, upper: float | None = None) -> None:
    """Raise ValueError unless 0 <= value (< upper)."""
    if not value >= 0 or (upper is not None and not value < upper):
        bound = f" and < {upper}" if upper is not None else ""
        raise ValueError(f"{name} must be >= 0{bound}, got {value!r}")


@register("grpo")
@dataclass
class GRPO(Algorithm):
    """GRPO (verl core_algos + TRL loss_type="grpo"); see the module docstring."""

    needs_groups = True  # group-relative advantages: a group of one trains nothing

    clip_ratio: float = 0.2
    """ε: the ratio is clipped to [1 - ε, 1 + ε]."""
    kl_coef: float = 0.0
    """β: weight of the k3 KL to the reference policy (0 = no reference model)."""
    adv_eps: float = 1e-6
    """Added to the group std before dividing."""

    def validate(self) -> None:
        check_clip("clip_ratio", self.clip_ratio, upper=1.0)
        check_clip("kl_coef", self.kl_coef)
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
        """Stats: clipfrac_low/high, approx_kl, tokens, and kl_ref (mean k3) when β > 0."""
        check_shapes(logp, old_logp, adv, mask, group_ids, ref_logp)
        if normalizer is None:
            normalizer = self.loss_normalizer(adv, mask, group_ids)
        log_ratio = masked_log_ratio(logp, old_logp, mask)
        loss_mat, low, high = clipped_surrogate(log_ratio, adv, self.clip_ratio, self.clip_ratio)
        stats = policy_stats(log_ratio, mask, low, high)
        if self.needs_reference:
            if ref_logp is None:
                raise ValueError("grpo with kl_coef > 0 needs ref_logp (algo.needs_reference)")
            kl = k3(masked_log_ratio(ref_logp, logp, mask))
            loss_mat = loss_mat + self.kl_coef * kl
            stats["kl_ref"] = masked_mean(kl.detach(), mask)
        return agg_loss(loss_mat, mask, "seq-mean-token-mean", normalizer), stats
