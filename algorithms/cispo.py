"""CISPO — Clipped IS-weight Policy Optimization (MiniMax 2025, "MiniMax-M1: Scaling Test-Time
Compute Efficiently with Lightning Attention", https://arxiv.org/abs/2506.13585, Eq. 4-5;
verl `compute_policy_loss_cispo`, `policy_loss.loss_mode=cispo`).

    A_i = (R_i - mean_g R) / (std_g R + 1e-6)            GRPO advantage (grpo_advantages)
    w_it = sg(clip(r_it, 1 - ε_low, 1 + ε_high))          r = exp(logp - old_logp), detached
    ℓ_it = -w_it · A_i · log π_θ(o_it)                    REINFORCE weighted by the clipped weight
    loss = Σ_it ℓ_it m_it / Σ_it m_it                     over the whole mini-batch (token-mean)

Unlike PPO's clip, nothing is dropped: a token whose ratio leaves the range keeps its gradient
-A·w/Z with the weight held at the bound (∂ℓ/∂logp = -w·A; the value of ℓ itself is not a
surrogate of the return, only its gradient is meaningful).

Where the references clip, and which one each hyper-parameter setting reproduces:
- Paper (default here): "we did not impose a lower bound on the IS weight by setting ε_low^IS to
  a large value; instead, we only tuned ε_high^IS" — so `clip_ratio_low=None` (no lower clip).
  The paper never states the ε_high^IS it used (not in the text, tables or appendix). The default
  `clip_ratio_high=0.2` (weight capped at 1.2) is verl's CISPO example
  (`clip_ratio_low=10, clip_ratio_high=0.2`, i.e. [1 - 10, 1.2]; since r > 0 a lower bound of
  -9 never binds, so the defaults here equal that example exactly). It is the only published
  setting of the two-parameter form; it is also PPO's usual ε.
- verl, two-sided: `clip_ratio_low=ε` (< 1) clips the weight to [1 - ε_low, 1 + ε_high]. Note that
  verl's ActorConfig default clip_ratio_low is 0.2, so a verl run that does not set it clips
  two-sided [0.8, 1.2].
- TRL (`loss_type="cispo"`) caps at an absolute value, `clamp(r, max=epsilon_high)`, with no lower
  bound; its docs recommend epsilon_high = 5.0 (ScaleRL's ε_max, arXiv 2510.13786). That is
  `clip_ratio_high = epsilon_high - 1` here (TRL 5.0 -> 4.0), `clip_ratio_low=None`.
- `clip_ratio_high=None` removes the cap: the plain IS-weighted policy gradient the paper notes
  CISPO reduces to without clipping.
- Aggregation: the paper's 1/Σ|o_i| (token-mean), as verl's default and TRL. The paper's
  "unified" variant with a PPO-style token mask M_it (Eq. 6-7) is not implemented (verl and TRL
  do not either). No KL term (the paper: "There is no KL penalty term in CISPO").
- Numerics: log r is masked and clamped to ±20 before exp() (as verl); log π is masked with
  torch.where before it is multiplied, so padding holding -inf/NaN gives neither NaN nor gradient.
- Stats: clipfrac_low / clipfrac_high are the fractions of mask tokens whose IS *weight* is
  truncated (r < 1 - ε_low / r > 1 + ε_high, whatever the sign of A: those tokens keep a gradient,
  unlike PPO's clipped tokens); their sum is verl's CISPO `pg_clipfrac` (ratio != clipped ratio).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from algorithms.base import Algorithm, check_shapes
from algorithms.core import agg_loss, default_normalizer, masked_log_ratio, policy_stats
from algorithms.grpo import check_clip, grpo_advantages
from algorithms.registry import register


@register("cispo")
@dataclass
class CISPO(Algorithm):
    """CISPO (MiniMax-M1 paper: upper clip only; verl two-sided via clip_ratio_low)."""

    needs_groups = True  # group-relative advantages: a group of one trains nothing

    clip_ratio_low: float | None = None
    """ε_low: the IS weight is clipped below at 1 - ε_low. None (the paper): no lower bound; any
    value >= 1 is the same (verl's example uses 10). A value < 1 gives verl's two-sided clip."""
    clip_ratio_high: float | None = 0.2
    """ε_high: the IS weight is capped at 1 + ε_high (verl's example 0.2; the paper tunes it but
    does not state it; TRL's absolute cap c is ε_high = c - 1). None: no cap."""
    adv_eps: float = 1e-6
    """Added to the group std before dividing."""

    def validate(self) -> None:
        if self.clip_ratio_low is not None:
            check_clip("clip_ratio_low", self.clip_ratio_low)
        if self.clip_ratio_high is not None:
            check_clip("clip_ratio_high", self.clip_ratio_high)
        check_clip("adv_eps", self.adv_eps)

    def advantages(self, rewards: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
        return grpo_advantages(rewards, group_ids, self.adv_eps)

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
        """Stats: clipfrac_low/high (tokens whose IS weight is truncated), approx_kl, tokens."""
        check_shapes(logp, old_logp, adv, mask, group_ids)
        if normalizer is None:
            normalizer = self.loss_normalizer(adv, mask, group_ids)
        log_ratio = masked_log_ratio(logp, old_logp, mask)
        ratio = torch.exp(log_ratio)
        lo = None if self.clip_ratio_low is None else 1.0 - self.clip_ratio_low
        hi = None if self.clip_ratio_high is None else 1.0 + self.clip_ratio_high
        weight = (ratio if lo is None and hi is None else torch.clamp(ratio, lo, hi)).detach()
        m = mask.bool()
        logp_m = torch.where(m, logp.to(log_ratio.dtype), torch.zeros_like(log_ratio))
        loss_mat = -weight * adv.to(log_ratio.dtype)[:, None] * logp_m
        loss = agg_loss(loss_mat, mask, "token-mean", normalizer)
        none = torch.zeros_like(m)
        low = ratio < lo if lo is not None else none
        high = ratio > hi if hi is not None else none
        return loss, policy_stats(log_ratio, mask, low, high)
