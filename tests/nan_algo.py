"""A deliberately broken algorithm: GRPO whose loss is NaN, to test the loop's non-finite path."""

from dataclasses import dataclass

import algorithms
from algorithms.grpo import GRPO


@algorithms.register("nan_loss_test")
@dataclass
class NaNLoss(GRPO):
    def policy_loss(self, logp, old_logp, adv, mask, group_ids, *, normalizer=None, ref_logp=None):
        loss, stats = super().policy_loss(
            logp, old_logp, adv, mask, group_ids, normalizer=normalizer, ref_logp=ref_logp
        )
        return loss * float("nan"), stats
