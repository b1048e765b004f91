"""Deliberately broken algorithms for the loop's non-finite paths: GRPO whose loss is NaN, GRPO
whose loss is finite but whose gradient is NaN, and GRPO whose loss is NaN on one group's rows."""

from dataclasses import dataclass

import torch

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


class _NaNGradient(torch.autograd.Function):
    """Identity forward (the loss stays finite); NaN gradient backward."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return torch.full_like(grad, float("nan"))


@algorithms.register("nan_grad_test")
@dataclass
class NaNGradient(GRPO):
    """GRPO whose loss is finite but whose gradient is NaN: the optimizer step must be skipped."""

    def policy_loss(self, logp, old_logp, adv, mask, group_ids, *, normalizer=None, ref_logp=None):
        return super().policy_loss(
            _NaNGradient.apply(logp), old_logp, adv, mask, group_ids,
            normalizer=normalizer, ref_logp=ref_logp,
        )  # fmt: skip


@algorithms.register("nan_group_test")
@dataclass
class NaNGroup(GRPO):
    """GRPO whose loss is NaN on any micro-batch holding a row of group `nan_group`: with that group
    one row, on one rank of a data-parallel update only (tests/dp_update_worker.py)."""

    nan_group: int = -1

    def policy_loss(self, logp, old_logp, adv, mask, group_ids, *, normalizer=None, ref_logp=None):
        loss, stats = super().policy_loss(
            logp, old_logp, adv, mask, group_ids, normalizer=normalizer, ref_logp=ref_logp
        )
        poisoned = bool((torch.as_tensor(group_ids) == self.nan_group).any())
        return (loss * float("nan") if poisoned else loss), stats
