"""GSPO — Group Sequence Policy Optimization (Zheng et al. 2025, https://arxiv.org/abs/2507.18071;
verl `compute_policy_loss_gspo`, `policy_loss.loss_mode=gspo`).

    A_i = (R_i - mean_g R) / (std_g R + 1e-6)            GRPO advantage (grpo_advantages)
    s_i = exp( (1/|o_i|) Σ_t m_it log r_it )             sequence ratio: geometric mean of r_it
    s_it = sg(s_i) · π_θ(o_it) / sg(π_θ(o_it))            GSPO-token form: value s_i, gradient
                                                          through token t's own log-prob
    ℓ_it = -min(s_it A_i, clip(s_it, 1 - ε_low, 1 + ε_high) A_i)    ε_low 3e-4, ε_high 4e-4
    loss = (1/N) Σ_i (1/|o_i|) Σ_t ℓ_it m_it             N = completions in the mini-batch
                                                          (seq-mean-token-mean)

Sequence form = token form. With A_i constant over the sequence (outcome rewards), the paper's
sequence objective -(1/N) Σ_i min(s_i A_i, clip(s_i) A_i) and the token form above have the
same value and the same gradient: ∂s_i/∂logp_it = s_i/|o_i|, and the token form gives
∂ℓ_it/∂logp_it = -A_i s_i (unclipped), averaged with 1/|o_i|. Every token of a sequence gets
the same gradient -A_i s_i / (|o_i| N), and a clipped sequence (s_i out of range on the side
its advantage pushes) gets none. The token form is what verl computes; it is implemented here
so the gradient equals verl's (tests check both forms and verl).

References and where they disagree:
- Clip range: the paper's 3e-4 / 4e-4 ("we set the left and right clipping ranges in Eq. (5)
  to 3e-4 and 4e-4"), followed; verl reads them from clip_ratio_low / clip_ratio_high (its
  GSPO recipe sets the same numbers).
- Aggregation: the paper averages over the group's sequences (seq-mean-token-mean, as verl's
  recommended `loss_agg_mode` for GSPO; verl's own fallback is token-mean). N counts completions
  with >= 1 mask token, as GRPO here and verl's agg_loss.
- Numerics: the token log-ratios are masked and clamped to ±20 before the mean (the contract of
  `masked_log_ratio`; verl averages unclamped differences), and log s_it is clamped above at 10
  as verl does (`torch.clamp(log_seq_importance_ratio, max=10.0)`; the gradient is 0 past it).
  Neither clamp binds for any real update.
- Advantage: GRPO's (a group of one gets A = 0, see grpo.py). No KL term (the paper has none).
- Stats: clipfrac_low / clipfrac_high count the mask tokens of clipped sequences (s_i < 1 - ε_low
  with A < 0 / s_i > 1 + ε_high with A > 0); their sum is verl's `pg_clipfrac` (verl reports
  `pg_clipfrac_lower` = 0 for GSPO). approx_kl is the token-level k3.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from algorithms.base import Algorithm, check_shapes
from algorithms.core import (
    agg_loss,
    clipped_surrogate,
    default_normalizer,
    masked_log_ratio,
    policy_stats,
)
from algorithms.grpo import check_clip, grpo_advantages
from algorithms.registry import register

SEQ_LOG_RATIO_MAX = 10.0
"""log s_it is clamped above at this value before exp(), as verl's GSPO loss does."""


def sequence_log_ratio(log_ratio: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log s_i = mean over mask tokens of log r_it; 0 for a completion with no mask token. [B]."""
    m = mask.to(log_ratio.dtype)
    return (log_ratio * m).sum(-1) / m.sum(-1).clamp(min=1)


def token_level_sequence_log_ratio(log_ratio: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log s_it = sg(log s_i) + log r_it - sg(log r_it): value log s_i, gradient 1 w.r.t. logp_it.

    (log r_it - sg(log r_it) has logp_it - sg(logp_it)'s gradient, and is 0 off the mask.)
    Clamped above at SEQ_LOG_RATIO_MAX, as verl. [B, T].
    """
    log_seq = sequence_log_ratio(log_ratio, mask).detach()
    return (log_ratio - log_ratio.detach() + log_seq[:, None]).clamp(max=SEQ_LOG_RATIO_MAX)


@register("gspo")
@dataclass
class GSPO(Algorithm):
    """GSPO (paper + verl `gspo`, token form); see the module docstring."""

    needs_groups = True  # group-relative advantages: a group of one trains nothing

    clip_ratio_low: float = 3e-4
    """ε_low: the sequence ratio s_i is clipped below at 1 - ε_low (paper: 3e-4)."""
    clip_ratio_high: float = 4e-4
    """ε_high: the sequence ratio s_i is clipped above at 1 + ε_high (paper: 4e-4)."""
    adv_eps: float = 1e-6
    """Added to the group std before dividing."""

    def validate(self) -> None:
        check_clip("clip_ratio_low", self.clip_ratio_low, upper=1.0)
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
        """Stats: clipfrac_low/high (tokens of clipped sequences), approx_kl, tokens."""
        check_shapes(logp, old_logp, adv, mask, group_ids)
        if normalizer is None:
            normalizer = self.loss_normalizer(adv, mask, group_ids)
        log_ratio = masked_log_ratio(logp, old_logp, mask)
        log_s = token_level_sequence_log_ratio(log_ratio, mask)
        loss_mat, low, high = clipped_surrogate(
            log_s, adv, self.clip_ratio_low, self.clip_ratio_high
        )
        loss = agg_loss(loss_mat, mask, "seq-mean-token-mean", normalizer)
        return loss, policy_stats(log_ratio, mask, low, high)
