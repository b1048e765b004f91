"""PSR — Positive Sample Reinforcement (Zhu et al. 2025, "The Surprising Effectiveness of Negative
Reinforcement in LLM Reasoning", https://arxiv.org/abs/2506.01347; code: TianHongZXY/RLVR-Decomposed
@ a5d4e7c, `algorithm.adv_estimator=psr_nsr algorithm.advantage=positive`).

    correct_i = R_i >= τ                                   τ = correct_threshold = 1.0
    A_i = +1 if correct_i else 0                           only correct completions train
    ℓ_it = -min(r_it A_i, clip(r_it, 1 - ε, 1 + ε) A_i)    ε = 0.2, r = exp(logp - old_logp)
    loss = Σ_{i correct} Σ_t ℓ_it m_it / Σ_{i correct} Σ_t m_it     (token-mean)

The paper's L_PSR = -E_x[Σ_{y: r(x,y)=+1} π_θ(y|x)]: maximise the likelihood of correct
answers, i.e. REINFORCE (with the PPO clip) on the correct samples with reward +1 and nothing
else; on-policy (r = 1) the gradient is -Σ_{correct} ∇log π / (their tokens).

Followed: the reference. `compute_psr_nsr_outcome_advantage` gives A = R (= 1 on a correct
completion, gamma = 1) and `ray_trainer.fit` subsets the batch to `score == 1` before the
update; `compute_policy_loss` is the PPO clip with `masked_mean` (token-mean) over that subset.
Here the incorrect rows are masked out of the loss and of `loss_normalizer` instead of removed,
which gives the subset's token-mean over the mini-batch. Correctness of fractional rewards
(threshold), the binarised A, the per-micro-batch normaliser of the reference and what is not
reproduced (entropy bonus 0.001, drop_extra_rows): see algorithms/_decomposed.py.

No group baseline: `needs_groups` is False; an all-correct group trains (A = +1 each), an
all-incorrect group contributes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from algorithms._decomposed import DecomposedPG, signed_advantages
from algorithms.registry import register


@register("psr")
@dataclass
class PSR(DecomposedPG):
    """PSR (TianHongZXY/RLVR-Decomposed, advantage=positive); see the module docstring."""

    subset = "positive"

    def advantages(self, rewards: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
        """+1 for a correct completion (R >= τ), 0 otherwise. [B] -> [B]."""
        return signed_advantages(rewards, self.correct_threshold, 1.0, 0.0)
