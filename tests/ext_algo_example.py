"""RLOO in one file, registered from outside the `algorithms` package."""

from dataclasses import dataclass

import torch

import algorithms
from algorithms.core import (
    agg_loss,
    clipped_surrogate,
    group_index,
    group_mean,
    masked_log_ratio,
    policy_stats,
)


@algorithms.register("rloo_example")
@dataclass
class RLOOExample(algorithms.Algorithm):
    """REINFORCE with a leave-one-out baseline (Ahmadian et al. 2024), PPO-clipped, token-mean.

    A_i = R_i - mean_{j != i in g} R_j = n/(n-1) · (R_i - mean_g R);  a group of one: A = 0.
    """

    clip_ratio: float = 0.2
    """ε: the ratio is clipped to [1 - ε, 1 + ε]."""

    def advantages(self, rewards, group_ids):
        """rewards[B], group_ids[B] -> adv[B]."""
        inverse, counts = group_index(group_ids)
        n = counts[inverse].to(rewards)
        return (rewards - group_mean(rewards, group_ids)) * n / (n - 1).clamp(min=1)

    def loss_normalizer(self, adv, mask, group_ids):
        """Mask tokens in the whole mini-batch (token-mean)."""
        return mask.sum().to(torch.float64)

    def policy_loss(self, logp, old_logp, adv, mask, group_ids, *, normalizer=None, ref_logp=None):
        """logp, old_logp, mask: [B, T]; adv, group_ids: [B] -> (loss, stats)."""
        if normalizer is None:  # called on a whole mini-batch
            normalizer = self.loss_normalizer(adv, mask, group_ids)
        log_ratio = masked_log_ratio(logp, old_logp, mask)
        loss_mat, low, high = clipped_surrogate(log_ratio, adv, self.clip_ratio, self.clip_ratio)
        loss = agg_loss(loss_mat, mask, "token-mean", normalizer)
        return loss, policy_stats(log_ratio, mask, low, high)
