"""W-REINFORCE — Weighted REINFORCE (Zhu et al. 2025, "The Surprising Effectiveness of Negative
Reinforcement in LLM Reasoning", https://arxiv.org/abs/2506.01347; code: TianHongZXY/RLVR-Decomposed
@ a5d4e7c, `algorithm.adv_estimator=psr_nsr algorithm.advantage=weighted
algorithm.positive_advantage_weight=λ`).

    A_i = λ if R_i >= τ (correct), -1 if R_i < τ (incorrect)     λ = 0.1, τ = 1.0
    ℓ_it = -min(r_it A_i, clip(r_it, 1 - ε, 1 + ε) A_i)          ε = 0.2, r = exp(logp - old_logp)
    loss = Σ_i Σ_t ℓ_it m_it / Σ_i Σ_t m_it                      every completion (token-mean)

The paper's L_W-REINFORCE = λ·L_PSR + L_NSR: REINFORCE with rewards +1 / -1, the positive
samples down-weighted by λ. λ = 1 is plain REINFORCE with ±1 rewards; λ → 0 approaches NSR
(but keeps the correct completions' tokens in the denominator).

Followed: the reference's advantage route, which its scripts use. In
`compute_psr_nsr_outcome_advantage` with advantage="weighted": A = R, then
`advantages[correct_idx] *= positive_advantage_weight` and `advantages[incorrect_idx] -= 1`,
so A = λ·1 = λ on `score == 1` and 0 - 1 = -1 on `score == 0`: λ weights the positive samples
and the negatives keep weight 1. No subset; `compute_policy_loss` is the PPO clip with
`masked_mean` (token-mean) over the whole batch, so both halves share one denominator.
The default λ = 0.1 is the README's recommended value (and the scripts' commented
`positive_advantage_weight=0.1`); the config's own default, 1, is plain REINFORCE.
The reference also has a loss-side route (actor.positive_learning_weight = λ with
positive_advantage_weight = 1), which asserts 0 < λ < 1 and gives the same loss; we accept any
finite λ >= 0. Shared decisions (threshold τ for fractional rewards, binarised A, the
reference's per-micro-batch normaliser, entropy bonus not reproduced): algorithms/_decomposed.py.

No group baseline: `needs_groups` is False; all-correct and all-incorrect groups train.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from algorithms._decomposed import DecomposedPG, check_weight, signed_advantages
from algorithms.registry import register


@register("w_reinforce")
@dataclass
class WReinforce(DecomposedPG):
    """W-REINFORCE (TianHongZXY/RLVR-Decomposed, advantage=weighted); see the module docstring."""

    subset = None

    positive_advantage_weight: float = 0.1
    """λ: the advantage of a correct completion (an incorrect one gets -1); finite, >= 0."""

    def validate(self) -> None:
        super().validate()
        check_weight("positive_advantage_weight", self.positive_advantage_weight)

    def advantages(self, rewards: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
        """λ for a correct completion (R >= τ), -1 for an incorrect one. [B] -> [B]."""
        return signed_advantages(
            rewards, self.correct_threshold, float(self.positive_advantage_weight), -1.0
        )
