"""NSR — Negative Sample Reinforcement (Zhu et al. 2025, "The Surprising Effectiveness of Negative
Reinforcement in LLM Reasoning", https://arxiv.org/abs/2506.01347; code: TianHongZXY/RLVR-Decomposed
@ a5d4e7c, `algorithm.adv_estimator=psr_nsr algorithm.advantage=negative`).

    incorrect_i = R_i < τ                                  τ = correct_threshold = 1.0
    A_i = -1 if incorrect_i else 0                         only incorrect completions train
    ℓ_it = -min(r_it A_i, clip(r_it, 1 - ε, 1 + ε) A_i)    ε = 0.2, r = exp(logp - old_logp)
    loss = Σ_{i incorrect} Σ_t ℓ_it m_it / Σ_{i incorrect} Σ_t m_it     (token-mean)

The paper's L_NSR = -E_x[Σ_{y: r(x,y)=-1} -π_θ(y|x)]: lower the likelihood of wrong answers and
nothing else; the probability mass it frees is redistributed by the model's own prior, which the
paper finds keeps entropy and pass@k high. On-policy (r = 1) the gradient is
+Σ_{incorrect} ∇log π / (their tokens).

NSR is WAPO's mirror image, and the natural control for WAPO's claim. WAPO (algorithms/wapo.py)
trains on the positive-advantage completions only (A = R - mean_g > 0, the winners) and
attributes its stability to that; NSR trains on the incorrect completions only. Running both
(and PSR, the positive-only half without WAPO's group baseline) asks whether WAPO's result is
specific to learning from winners, or whether dropping either half of the signal does as well.
It is a mirror in *which* completions train, not term for term: NSR has no group baseline
(all-incorrect groups train too, with A = -1), the symmetric PPO clip instead of WAPO's
one-sided cap, and a token-mean instead of WAPO's G·L_seq·n_pos normaliser.

Followed: the reference. `compute_psr_nsr_outcome_advantage` gives A = R - 1 (= -1 on an
incorrect completion, gamma = 1) and `ray_trainer.fit` subsets the batch to `score == 0` before
the update; `compute_policy_loss` is the PPO clip with `masked_mean` (token-mean) over that
subset. Here the correct rows are masked out of the loss and of `loss_normalizer` instead of
removed. Correctness of fractional rewards (an F1 of 0.6 is incorrect at τ = 1 and trains with
A = -1), the binarised A, the reference's per-micro-batch normaliser and what is not reproduced
(entropy bonus 0.001, drop_extra_rows): see algorithms/_decomposed.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from algorithms._decomposed import DecomposedPG, signed_advantages
from algorithms.registry import register


@register("nsr")
@dataclass
class NSR(DecomposedPG):
    """NSR (TianHongZXY/RLVR-Decomposed, advantage=negative); see the module docstring."""

    subset = "negative"

    def advantages(self, rewards: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
        """-1 for an incorrect completion (R < τ), 0 otherwise. [B] -> [B]."""
        return signed_advantages(rewards, self.correct_threshold, 0.0, -1.0)
