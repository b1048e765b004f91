"""DAPO — Decoupled Clip and Dynamic sAmpling Policy Optimization (Yu et al. 2025,
https://arxiv.org/abs/2503.14476).

    R'_i = R_i + min(-(|o_i| - (L - L_buf)) / L_buf · f, 0), floored at -f   (overlong shaping)
    keep group g  <=>  its rewards are not all equal                     (dynamic sampling)
    A_i = (R_i - mean_g R) / (std_g R + 1e-6)                            (GRPO advantage)
    ℓ_it = -min(r_it A_i, clip(r_it, 1 - ε_low, 1 + ε_high) A_i)          ε_low 0.2, ε_high 0.28
    loss = Σ_it ℓ_it m_it / Σ_it m_it   over the whole mini-batch        (token-mean)

References and where they disagree:
- Loss and clip-higher: verl `compute_policy_loss_vanilla` with clip_ratio_low/high and
  `loss_agg_mode="token-mean"` (the DAPO recipe), without verl's dual-clip (the paper has none).
- Overlong shaping: verl's DAPO reward manager (expected = L - L_buf; exceed = |o| - expected;
  penalty = min(-exceed / L_buf · f, 0)). verl keeps going linearly past L; the paper's
  formula is -1 (i.e. -f) for |o| > L. Followed: the paper's floor at -f. The two agree for
  every |o| <= L, the only lengths a rollout capped at L can have. L = max_new_tokens (bind);
  L_buf defaults to L // 4 (the paper: 4096 of 20480, i.e. L/5, for 16k-token answers).
  `truncated` is not used (verl uses the length only).
- Dynamic sampling: verl's DAPO trainer keeps a group when np.std(metric) > 0 *or* it has one
  completion. Here a group of one is dropped: its GRPO advantage is 0 (see grpo.py), so it
  would only dilute the token-mean. Equality is tested exactly (max == min), not std > 0.
  verl filters on `filter_groups.metric` (the recipe uses `acc`, the verifier's correctness),
  so the loop should pass the verifier rewards; shaped rewards can differ by length alone.
  The algorithm only decides `keep`; the loop regenerates (at most `max_gen_rounds` extra
  rounds, verl's `max_num_gen_batches`) and then applies `on_short_batch`.
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
    masked_log_ratio,
    policy_stats,
)
from algorithms.grpo import check_clip, grpo_advantages
from algorithms.registry import register

SHORT_BATCH_POLICIES = ("error", "truncate")


@register("dapo")
@dataclass
class DAPO(Algorithm):
    """DAPO (verl core_algos + DAPO recipe); overlong shaping needs `bind`."""

    needs_groups = True  # group-relative advantages: a group of one trains nothing

    clip_ratio_low: float = 0.2
    """ε_low: the ratio is clipped below at 1 - ε_low."""
    clip_ratio_high: float = 0.28
    """ε_high: the ratio is clipped above at 1 + ε_high (clip-higher)."""
    adv_eps: float = 1e-6
    """Added to the group std before dividing."""
    dynamic_sampling: bool = True
    """Drop groups whose rewards are all equal (filter_groups)."""
    max_gen_rounds: int = 3
    """Extra generation rounds the loop may run to refill dropped groups."""
    on_short_batch: str = "truncate"
    """Still short after max_gen_rounds: "truncate" trains on the kept groups (a smaller batch,
    logged as actor/kept_frac) and "error" raises, as verl does. The benchmark defaults to
    truncate: tiny models often have most groups all-correct or all-wrong, and one short batch
    must not crash a DAG of hundreds of runs."""
    overlong_shaping: bool = True
    """Add the soft overlong penalty to the rewards (shape_rewards)."""
    overlong_buffer_len: int | None = None
    """L_buf in tokens; None = max_new_tokens // 4. Must be < max_new_tokens."""
    overlong_penalty_factor: float = 1.0
    """f: the penalty at |o| = L (and beyond)."""

    def validate(self) -> None:
        check_clip("clip_ratio_low", self.clip_ratio_low, upper=1.0)
        check_clip("clip_ratio_high", self.clip_ratio_high)
        check_clip("adv_eps", self.adv_eps)
        check_clip("overlong_penalty_factor", self.overlong_penalty_factor)
        if int(self.max_gen_rounds) != self.max_gen_rounds or self.max_gen_rounds < 0:
            raise ValueError(f"max_gen_rounds must be an integer >= 0, got {self.max_gen_rounds!r}")
        if self.on_short_batch not in SHORT_BATCH_POLICIES:
            raise ValueError(
                f"on_short_batch must be one of {SHORT_BATCH_POLICIES}, got {self.on_short_batch!r}"
            )
        if self.overlong_buffer_len is not None and self.overlong_buffer_len < 1:
            raise ValueError(f"overlong_buffer_len must be >= 1, got {self.overlong_buffer_len!r}")

    def bind(self, *, group_size: int, max_new_tokens: int, max_prompt_len: int) -> DAPO:
        super().bind(
            group_size=group_size, max_new_tokens=max_new_tokens, max_prompt_len=max_prompt_len
        )
        if self.overlong_shaping and self.buffer_len >= max_new_tokens:
            raise ValueError(
                f"overlong_buffer_len {self.buffer_len} must be < max_new_tokens "
                f"{max_new_tokens}, or every completion is penalised; lower it or set "
                "overlong_shaping=False"
            )
        return self

    @property
    def buffer_len(self) -> int:
        """L_buf in tokens (the default depends on the bound max_new_tokens)."""
        if self.overlong_buffer_len is not None:
            return int(self.overlong_buffer_len)
        return max(self.shape.max_new_tokens // 4, 1)

    def shape_rewards(
        self, rewards: torch.Tensor, lengths: torch.Tensor, truncated: torch.Tensor
    ) -> torch.Tensor:
        """R + min(-(|o| - (L - L_buf)) / L_buf · f, 0), floored at -f. [B] -> [B]."""
        if not self.overlong_shaping:
            return rewards
        rewards = torch.as_tensor(rewards)
        rewards = rewards if rewards.is_floating_point() else rewards.to(torch.get_default_dtype())
        f, buf = self.overlong_penalty_factor, self.buffer_len
        exceed = torch.as_tensor(lengths).to(rewards) - (self.shape.max_new_tokens - buf)
        return rewards + (-exceed / buf * f).clamp(min=-f, max=0.0)

    def filter_groups(self, rewards: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
        """keep[B]: False for every completion of a group whose rewards are all equal."""
        if not self.dynamic_sampling:
            return super().filter_groups(rewards, group_ids)
        return ~group_all_equal(rewards, group_ids)

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
        """Stats: clipfrac_low/high, approx_kl, tokens."""
        check_shapes(logp, old_logp, adv, mask, group_ids)
        if normalizer is None:
            normalizer = self.loss_normalizer(adv, mask, group_ids)
        log_ratio = masked_log_ratio(logp, old_logp, mask)
        loss_mat, low, high = clipped_surrogate(
            log_ratio, adv, self.clip_ratio_low, self.clip_ratio_high
        )
        loss = agg_loss(loss_mat, mask, "token-mean", normalizer)
        return loss, policy_stats(log_ratio, mask, low, high)
