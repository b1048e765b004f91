"""REINFORCE with a group-median baseline in one file, registered from outside `algorithms`."""

from dataclasses import dataclass

import torch

import algorithms
from algorithms.core import (
    agg_loss,
    clipped_surrogate,
    group_index,
    masked_log_ratio,
    policy_stats,
)


@algorithms.register("median_baseline_example")
@dataclass
class MedianBaselineExample(algorithms.Algorithm):
    """REINFORCE with the group's median reward as baseline, PPO-clipped, token-mean.

    A_i = R_i - median_g R  (an even group: the mean of its two middle rewards);
    a group of one or an all-equal group: A = 0.
    """

    needs_groups = True  # the baseline is the group's: a group of one trains nothing

    clip_ratio: float = 0.2
    """ε: the ratio is clipped to [1 - ε, 1 + ε]."""

    def advantages(self, rewards, group_ids):
        """rewards[B], group_ids[B] -> adv[B]."""
        rewards = torch.as_tensor(rewards)
        rewards = rewards if rewards.is_floating_point() else rewards.float()
        inverse, counts = group_index(group_ids)
        baseline = torch.empty_like(rewards)
        for g in range(len(counts)):
            rows = inverse == g
            baseline[rows] = rewards[rows].quantile(0.5)  # interpolates: even groups average
        return rewards - baseline

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
