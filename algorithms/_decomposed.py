"""Shared code of PSR, NSR and W-REINFORCE (Zhu et al., "The Surprising Effectiveness of Negative
Reinforcement in LLM Reasoning", https://arxiv.org/abs/2506.01347; code: TianHongZXY/RLVR-Decomposed
at commit a5d4e7c1df6016ebd7396bd6db83d885120adb6d). The leading underscore keeps this module out
of the registry (algorithms/__init__.py imports only the other modules); psr.py, nsr.py and
w_reinforce.py import it.

The reference is a verl fork. The three algorithms share one advantage estimator and one loss:

- `verl/trainer/ppo/core_algos.py::compute_psr_nsr_outcome_advantage` (adv_estimator=psr_nsr,
  algorithm.advantage = positive | negative | weighted): the discounted return of the
  token-level reward, which with gamma = 1 (the config default; the scripts keep it) and the
  verifier score on the last token is R on every response token; then
      positive: A = R          negative: A = R - 1
      weighted: A = λ·R on correct responses, R - 1 on incorrect ones.
  correct = `token_level_scores.sum(-1) == 1`, incorrect = `== 0`, and `ray_trainer.fit`
  asserts that every response is one or the other: the reference only runs on rewards in
  {0, 1}, where A is +1 (PSR), -1 (NSR), or λ / -1 (W-REINFORCE).
- Selection (`ray_trainer.fit`): for positive / negative the batch is *subset* to the correct /
  incorrect responses before the update (`batch.subset(correct_idx)`); weighted keeps all.
- Loss (`core_algos.compute_policy_loss`, called by `workers/actor/dp_actor.py`): the PPO clip
  ℓ = max(-A·r, -A·clip(r, 1 - ε, 1 + ε)), ε = actor.clip_ratio = 0.2, no dual-clip, and
  `masked_mean(ℓ, response_mask)`, i.e. token-mean over the (subset) batch.

Here, for a reward R and threshold τ (`correct_threshold`, default 1.0):

    correct_i = R_i >= τ        incorrect_i = R_i < τ        (a NaN reward is neither: A = 0)
    PSR:  A_i = +1 if correct else 0;   trains the correct completions only
    NSR:  A_i = -1 if incorrect else 0; trains the incorrect completions only
    W-REINFORCE: A_i = λ if correct, -1 if incorrect;  trains every completion
    ℓ_it = -min(r_it A_i, clip(r_it, 1 - ε, 1 + ε) A_i),    r = exp(logp - old_logp)
    loss = Σ_{i trained} Σ_t ℓ_it m_it / Σ_{i trained} Σ_t m_it     (token-mean, mini-batch)

Decisions, and where we differ from the reference:
- Correctness. On rewards in {0, 1} any τ in (0, 1] gives exactly the reference's split, and
  τ = 1 also splits the paper's {-1, +1} convention. For a shaped or fractional reward (QA F1
  in [0, 1]) the reference asserts; we call a completion correct when R >= τ. The default
  τ = 1.0 is the reference's `== 1` read as `>=`, and the benchmark's own definition of a
  correct answer (evaluation: math_reward == 1, EM == 1): a partial F1 of 0.6 is incorrect, so
  NSR pushes it down and PSR ignores it. τ = 0.5 would call majority-overlap answers correct.
  validate() requires 0 < τ <= 1 (outside it, a reward in [0, 1] is always or never correct).
- Advantage magnitude. We binarise (+1 / -1 / λ) instead of reusing R and R - 1: they are the
  same numbers on the reference's domain, and the paper defines the objectives on r in {-1, +1}
  (L_PSR = -E[Σ_{r=+1} π], L_NSR = -E[Σ_{r=-1} -π], W = λ·L_PSR + L_NSR). R - 1 would let the
  reward scale leak in (a {-1, +1} reward would give -2; an F1 of 0.6 would give -0.4).
- No group baseline: A_i depends on R_i alone, so `needs_groups` is False, a group of one
  trains, and so do all-correct (PSR, W) and all-incorrect (NSR, W) groups, unlike GRPO.
- Subset vs mask. The reference removes the other half of the batch before it splits the
  batch into mini-batches; the contract gives `policy_loss` the whole mini-batch, so PSR / NSR
  mask the other rows out of the loss *and* out of the denominator: the mini-batch's token-mean
  equals the token-mean of the reference's subset batch. With one mini-batch per step
  (train.mini_batches = 1, the default) the update is identical; with several, the reference
  packs only the kept completions into its mini-batches (so their count varies with the number
  of correct answers), while here each mini-batch keeps its own share.
- Normaliser. The reference takes `masked_mean` per *micro*-batch and, with use_dynamic_bsz
  (its scripts), scales each by len(micro) / ppo_mini_batch_size: a per-micro-batch
  normaliser whose value depends on how sequences were packed. `loss_normalizer` returns the
  mini-batch equivalent, Σ m over the mini-batch's trained completions, so micro-batches sum
  to the mini-batch's token-mean; identical to the reference when the mini-batch is one
  micro-batch. The test file shows the reference's weighting is this loss with
  normalizer = tokens_j · N / n_j per micro-batch j.
- Not reproduced: the actor's entropy bonus (actor.entropy_coeff = 0.001, the config default
  the scripts keep; `policy_loss` gets no logits here), `drop_extra_rows` (drops rows so the
  subset divides by the GPU count), gamma < 1 (never used), and the KL reward penalty (the
  scripts set kl_coef = 0.0). The reference clamps nothing before exp(); we clamp |log r| at 20
  like every algorithm here (core.masked_log_ratio), which changes nothing at real ratios.
- W-REINFORCE has a second route in the reference: actor.positive_learning_weight = λ in
  `compute_policy_loss` (with advantage=weighted and positive_advantage_weight = 1), which
  computes (Σm_pos/Σm)·mean_pos(ℓ)·λ + (Σm_neg/Σm)·mean_neg(ℓ) = the same token-mean; the
  scripts use the advantage route. Both are cross-checked in tests/test_zoo_decomposed.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from algorithms.base import Algorithm, check_shapes
from algorithms.core import agg_loss, clipped_surrogate, masked_log_ratio, policy_stats
from algorithms.grpo import check_clip


def check_threshold(value: float) -> None:
    """Raise ValueError unless 0 < value <= 1 (a real number, not a bool)."""
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok or not (0.0 < value <= 1.0):
        raise ValueError(
            f"correct_threshold must be a number in (0, 1] (a completion is correct when its "
            f"reward >= it), got {value!r}"
        )


def check_weight(name: str, value: float) -> None:
    """Raise ValueError unless value is a finite number >= 0."""
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def split_correct(
    rewards: torch.Tensor, threshold: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(correct[B] bool, incorrect[B] bool, float rewards[B]): R >= τ, R < τ (NaN: neither)."""
    rewards = torch.as_tensor(rewards)
    if not rewards.is_floating_point():
        rewards = rewards.to(torch.get_default_dtype())
    return rewards >= threshold, rewards < threshold, rewards


def signed_advantages(
    rewards: torch.Tensor, threshold: float, positive: float, negative: float
) -> torch.Tensor:
    """`positive` where R >= τ, `negative` where R < τ, 0 otherwise (NaN). [B] -> [B]."""
    correct, incorrect, rewards = split_correct(rewards, threshold)
    zero = torch.zeros_like(rewards)
    return torch.where(correct, zero + positive, torch.where(incorrect, zero + negative, zero))


@dataclass
class DecomposedPG(Algorithm):
    """Common base of psr / nsr / w_reinforce (not registered itself); see the module docstring.

    Subclasses set `subset` and `advantages`: "positive" trains the rows with A > 0, "negative"
    those with A < 0, None every row. A subset algorithm reports kept / dropped completions.
    """

    subset: ClassVar[str | None] = None

    clip_ratio: float = 0.2
    """ε: the ratio is clipped to [1 - ε, 1 + ε] (reference: actor.clip_ratio)."""
    correct_threshold: float = 1.0
    """τ: a completion is correct when its reward >= τ, incorrect when < τ; in (0, 1]."""

    def validate(self) -> None:
        check_clip("clip_ratio", self.clip_ratio, upper=1.0)
        check_threshold(self.correct_threshold)

    def trained(self, adv: torch.Tensor) -> torch.Tensor:
        """bool[B]: the completions that enter the loss and its denominator."""
        adv = torch.as_tensor(adv)
        if self.subset == "positive":
            return adv > 0
        if self.subset == "negative":
            return adv < 0
        return torch.ones(adv.shape, dtype=torch.bool, device=adv.device)

    def loss_normalizer(
        self, adv: torch.Tensor, mask: torch.Tensor, group_ids: torch.Tensor
    ) -> torch.Tensor:
        """Σ m over the trained completions of the whole mini-batch (token-mean)."""
        rows = self.trained(adv).to(mask.device)
        return (mask.bool() & rows[:, None]).sum().to(torch.float64)

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
        """Stats over the trained tokens: clipfrac_low/high, approx_kl, tokens; for psr / nsr
        also kept / dropped (completions trained / left out)."""
        check_shapes(logp, old_logp, adv, mask, group_ids)
        if normalizer is None:
            normalizer = self.loss_normalizer(adv, mask, group_ids)
        rows = self.trained(adv).to(mask.device)
        mask = mask.bool() & rows[:, None]
        log_ratio = masked_log_ratio(logp, old_logp, mask)
        loss_mat, low, high = clipped_surrogate(log_ratio, adv, self.clip_ratio, self.clip_ratio)
        loss = agg_loss(loss_mat, mask, "token-mean", normalizer)
        stats = policy_stats(log_ratio, mask, low, high)
        if self.subset is not None:
            stats["kept"] = rows.sum().to(log_ratio.dtype)
            stats["dropped"] = (~rows).sum().to(log_ratio.dtype)
        return loss, stats
