"""WAPO — Winner Advantage Policy Optimization (YSS et al., "A Gradient Perspective on RLVR
Stability and Winner Advantage Policy Optimization", arXiv:2606.16154; code:
github.com/layer6ai-labs/wapo, `loss_type="wapo"` in verifiers/rl/trainer).

    A_i = R_i - mean_g R                        only completions with A_i > 0 ("winners") train
    ℓ_it = -min(r_it, 1 + ε) · A_i              one-sided cap, ε = 9 (ratio capped at 10)
    loss = Σ_{i: A_i > 0} Σ_t ℓ_it m_it / (G · L_seq · n_pos)
    G = group size, L_seq = max_prompt_len + max_new_tokens, n_pos = groups in the mini-batch
    with at least one winner that has a token in the mask (a winner the loop's mismatch
    correction dropped does not count). All-equal groups (A = 0) and groups of one drop out by
    themselves.

Followed: the layer6ai-labs/wapo trainer. There the per-token weight is 1 / (G · max_seq_len)
(orchestrator, mean level "group") and the outer normaliser is the number of groups with a
positive-advantage completion, counted over the whole generation batch and multiplied by the
number of mini-batches. Here n_pos is counted in each mini-batch, as the contract asks for a
mini-batch denominator; with one mini-batch per step the two are identical, and otherwise they
differ only by how winners happen to split across mini-batches. The reference's
`normalize_by_kept_tokens` and peak/valley bin filters are options we do not reproduce.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from algorithms.base import Algorithm, check_shapes
from algorithms.core import agg_loss, clipped_surrogate, group_mean, masked_log_ratio, policy_stats
from algorithms.grpo import check_clip
from algorithms.registry import register


@register("wapo")
@dataclass
class WAPO(Algorithm):
    """WAPO (layer6ai-labs/wapo); needs `bind` (G and L_seq)."""

    needs_groups = True  # group-relative advantages: a group of one trains nothing

    clip_ratio_high: float = 9.0
    """ε: the ratio is capped at 1 + ε (no lower clip)."""

    def validate(self) -> None:
        check_clip("clip_ratio_high", self.clip_ratio_high)

    def advantages(self, rewards: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
        mean = group_mean(rewards, group_ids)
        return torch.as_tensor(rewards).to(mean) - mean

    def loss_normalizer(
        self, adv: torch.Tensor, mask: torch.Tensor, group_ids: torch.Tensor
    ) -> torch.Tensor:
        """G · L_seq · n_pos over the whole mini-batch (n_pos: groups with a winner, A > 0, that
        has a mask token: a winner the loop dropped, e.g. by the sequence mask, trains nothing)."""
        gids = torch.as_tensor(group_ids)
        winners = (adv > 0).to(mask.device) & mask.bool().any(-1)
        n_pos = torch.unique(gids[winners.to(gids.device)]).numel()
        shape = self.shape
        return torch.tensor(float(shape.group_size * shape.max_seq_len * n_pos), device=mask.device)

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
        """Stats (over the winners' tokens): clipfrac_low (always 0), clipfrac_high, approx_kl,
        tokens; kept / dropped: completions with A > 0 / the rest."""
        check_shapes(logp, old_logp, adv, mask, group_ids)
        if normalizer is None:
            normalizer = self.loss_normalizer(adv, mask, group_ids)
        winners = adv > 0
        mask = mask.bool() & winners[:, None]
        log_ratio = masked_log_ratio(logp, old_logp, mask)
        loss_mat, low, high = clipped_surrogate(log_ratio, adv, None, self.clip_ratio_high)
        loss = agg_loss(loss_mat, mask, "seq-mean-token-sum-norm", normalizer)
        stats = policy_stats(log_ratio, mask, low, high)
        stats["kept"] = winners.sum().to(log_ratio.dtype)
        stats["dropped"] = (~winners).sum().to(log_ratio.dtype)
        return loss, stats
