"""Deliberately broken algorithms for the loop's non-finite paths: GRPO whose loss is NaN, and
GRPO whose loss is finite but whose gradient is NaN."""

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
