"""PSR, NSR and W-REINFORCE (Zhu et al. 2025, arXiv:2506.01347): hand-computed values, edge cases,
micro-batch invariance, and a cross-check against the authors' code.

Expected values are literals worked out by hand (the arithmetic is in the comments), never by
calling the code under test. k3(r) = r - 1 - ln r. ε = 0.2: the clip range is [0.8, 1.2].

verl has none of the three, so the cross-check re-implements the reference's few lines of math
from TianHongZXY/RLVR-Decomposed at commit a5d4e7c1df6016ebd7396bd6db83d885120adb6d
(verl/trainer/ppo/core_algos.py, verl/trainer/ppo/ray_trainer.py, verl/workers/actor/dp_actor.py,
verl/utils/torch_functional.py) and feeds it the same float64 tensors.
"""

from __future__ import annotations

import math

import pytest
import torch

import algorithms

F64 = torch.float64
NAMES = ["psr", "nsr", "w_reinforce"]
REF_ADVANTAGE = {"psr": "positive", "nsr": "negative", "w_reinforce": "weighted"}


def bound(name: str, *, G: int = 4, L: int = 6, P: int = 5, **hparams) -> algorithms.Algorithm:
    return algorithms.get(name, **hparams).bind(group_size=G, max_new_tokens=L, max_prompt_len=P)


def t(x, dtype=F64) -> torch.Tensor:
    return torch.tensor(x, dtype=dtype)


# ============================================================================ registry, hparams


def test_registered_with_the_reference_defaults_and_no_group_requirement():
    assert {"psr", "nsr", "w_reinforce"} <= set(algorithms.available())
    assert not any(n.startswith("_") or "decomposed" in n for n in algorithms.available())
    assert algorithms.get("psr").hparams() == {"clip_ratio": 0.2, "correct_threshold": 1.0}
    assert algorithms.get("nsr").hparams() == {"clip_ratio": 0.2, "correct_threshold": 1.0}
    assert algorithms.get("w_reinforce").hparams() == {
        "clip_ratio": 0.2,
        "correct_threshold": 1.0,
        "positive_advantage_weight": 0.1,
    }
    for name in NAMES:
        cls = algorithms.get_class(name)
        assert cls.needs_groups is False  # A_i depends on R_i alone
        assert not algorithms.get(name).needs_reference
        bound(name, G=1)  # a group of one is fine: no baseline
        algo = algorithms.get(name)
        assert algorithms.get(name, **algo.hparams()) == algo


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("bad", [0.0, -0.5, 1.5, math.nan, math.inf, True, "1"])
def test_bad_threshold_is_rejected(name, bad):
    with pytest.raises(ValueError, match="correct_threshold"):
        algorithms.get(name, correct_threshold=bad)


@pytest.mark.parametrize("name", NAMES)
def test_bad_clip_is_rejected_and_threshold_one_and_an_int_are_fine(name):
    with pytest.raises(ValueError, match="clip_ratio"):
        algorithms.get(name, clip_ratio=1.5)
    assert algorithms.get(name, correct_threshold=1).correct_threshold == 1
    assert algorithms.get(name, correct_threshold=0.5).correct_threshold == 0.5


@pytest.mark.parametrize("bad", [-0.1, math.nan, math.inf, None, False])
def test_bad_positive_weight_is_rejected(bad):
    with pytest.raises(ValueError, match="positive_advantage_weight"):
        algorithms.get("w_reinforce", positive_advantage_weight=bad)
    assert algorithms.get("w_reinforce", positive_advantage_weight=0).positive_advantage_weight == 0


# ============================================================================ advantages
# rewards: 1 (correct), 0 (wrong), 0.6 (a partial F1), 0.5 (a half F1), 1 (correct), NaN.
# τ = 1: correct = R >= 1 -> rows 0, 4; incorrect = R < 1 -> rows 1, 2, 3; NaN is neither.
# τ = 0.5: correct -> rows 0, 2, 3, 4; incorrect -> row 1.
REWARDS = [1.0, 0.0, 0.6, 0.5, 1.0, math.nan]
GROUPS = [7, 7, 7, 3, 3, 3]


@pytest.mark.parametrize(
    "name,hparams,expected",
    [
        ("psr", {}, [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]),
        ("nsr", {}, [0.0, -1.0, -1.0, -1.0, 0.0, 0.0]),
        ("w_reinforce", {}, [0.1, -1.0, -1.0, -1.0, 0.1, 0.0]),
        ("w_reinforce", {"positive_advantage_weight": 1.0}, [1.0, -1.0, -1.0, -1.0, 1.0, 0.0]),
        ("psr", {"correct_threshold": 0.5}, [1.0, 0.0, 1.0, 1.0, 1.0, 0.0]),
        ("nsr", {"correct_threshold": 0.5}, [0.0, -1.0, 0.0, 0.0, 0.0, 0.0]),
        ("w_reinforce", {"correct_threshold": 0.5}, [0.1, -1.0, 0.1, 0.1, 0.1, 0.0]),
    ],
)
def test_advantage_hand_values(name, hparams, expected):
    adv = bound(name, **hparams).advantages(t(REWARDS), torch.tensor(GROUPS))
    assert adv.dtype == F64
    torch.testing.assert_close(adv, t(expected), rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    "name,on_ones,on_zeros",
    [("psr", 1.0, 0.0), ("nsr", 0.0, -1.0), ("w_reinforce", 0.1, -1.0)],
)
def test_all_correct_and_all_incorrect_groups_and_groups_of_one(name, on_ones, on_zeros):
    # No baseline: an all-correct group is not "all equal, A = 0" as in GRPO.
    algo = bound(name)
    ones = algo.advantages(t([1.0, 1.0, 1.0, 1.0]), torch.tensor([2, 2, 2, 2]))
    zeros = algo.advantages(t([0.0, 0.0, 0.0, 0.0]), torch.tensor([2, 2, 2, 2]))
    torch.testing.assert_close(ones, t([on_ones] * 4), rtol=0, atol=1e-12)
    torch.testing.assert_close(zeros, t([on_zeros] * 4), rtol=0, atol=1e-12)
    alone = algo.advantages(t([1.0, 0.0]), torch.tensor([5, 6]))  # two groups of one
    torch.testing.assert_close(alone, t([on_ones, on_zeros]), rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_integer_and_plus_minus_one_rewards(name):
    algo = bound(name)
    from_int = algo.advantages(torch.tensor([1, 0]), torch.tensor([0, 0]))
    # the paper's {-1, +1} convention splits the same way at τ = 1
    from_pm = algo.advantages(t([1.0, -1.0]), torch.tensor([0, 0]))
    assert from_int.is_floating_point()
    torch.testing.assert_close(from_int, from_pm.to(from_int.dtype), rtol=0, atol=0)


# ============================================================================ losses
# B = 3, T = 3. r = exp(logp - old_logp):
#   row 0 (R = 1, correct):        r = 1.0, 3.0, 0.5    mask 1, 1, 1
#   row 1 (R = 0, incorrect):      r = 1.1, 0.2, 2.0    mask 1, 1, 0  (r = 2.0 is padding)
#   row 2 (R = 0.6, incorrect at τ = 1, correct at τ = 0.5):
#                                  r = 0.5, 1.25, 4.0   mask 1, 1, 0  (r = 4.0 is padding)
# Per-token ℓ = -min(rA, clip(r, 0.8, 1.2)A):
#   A = +1:  r = 1 -> -1;  r = 3 -> -1.2 (high clip);  r = 0.5 -> -0.5;  r = 1.25 -> -1.2 (high)
#   A = -1:  r = 1.1 -> 1.1;  r = 0.2 -> 0.8 (low clip);  r = 0.5 -> 0.8 (low clip);
#            r = 1.25 -> 1.25 (the pessimistic unclipped branch: not clipped)
# k3: k3(1) = 0, k3(3) = 0.9013877113318902, k3(0.5) = 0.1931471805599453,
#     k3(1.1) = 0.004689820195675154, k3(0.2) = 0.8094379124341002, k3(1.25) = 0.026856448685790235
RATIOS = [[1.0, 3.0, 0.5], [1.1, 0.2, 2.0], [0.5, 1.25, 4.0]]
ROW_REWARDS = [1.0, 0.0, 0.6]
MASK = [[1, 1, 1], [1, 1, 0], [1, 1, 0]]
OLD = [[-1.0, -2.0, -0.5], [-1.5, -0.3, -2.5], [-0.7, -1.1, -3.0]]


def run_loss(algo, rewards=ROW_REWARDS, ratios=RATIOS, mask=MASK, old=OLD):
    old = t(old)
    logp = (old + torch.log(t(ratios))).requires_grad_()
    mask = torch.tensor(mask, dtype=torch.bool)
    gids = torch.zeros(len(rewards), dtype=torch.long)
    adv = algo.advantages(t(rewards), gids)
    loss, stats = algo.policy_loss(logp, old, adv, mask, gids)
    loss.backward()
    return loss, stats, logp.grad


def test_psr_loss_hand_values():
    # A = [1, 0, 0]: only row 0 trains. loss = (-1 - 1.2 - 0.5) / 3 tokens = -0.9
    loss, stats, grad = run_loss(bound("psr"))
    assert loss.item() == pytest.approx(-0.9, abs=1e-12)
    assert stats["tokens"].item() == 3
    assert stats["kept"].item() == 1 and stats["dropped"].item() == 2
    assert stats["clipfrac_high"].item() == pytest.approx(1 / 3)  # r = 3
    assert stats["clipfrac_low"].item() == 0.0
    # (0 + 0.9013877113318902 + 0.1931471805599453) / 3
    assert stats["approx_kl"].item() == pytest.approx(0.3648449639639452, abs=1e-12)
    # dloss/dlogp = -A·r / 3 unclipped: -1/3, 0 (clipped), -0.5/3 = -1/6; rows 1, 2: 0
    expected = t([[-1 / 3, 0.0, -1 / 6], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    torch.testing.assert_close(grad, expected, rtol=0, atol=1e-12)


def test_psr_threshold_lets_a_partial_reward_count_as_correct():
    # τ = 0.5: A = [1, 0, 1]. Row 2: -0.5 - 1.2 = -1.7. loss = (-2.7 - 1.7) / 5 = -0.88
    loss, stats, _ = run_loss(bound("psr", correct_threshold=0.5))
    assert loss.item() == pytest.approx(-0.88, abs=1e-12)
    assert stats["kept"].item() == 2 and stats["tokens"].item() == 5


def test_nsr_loss_hand_values():
    # A = [0, -1, -1]: rows 1, 2 train. loss = (1.1 + 0.8 + 0.8 + 1.25) / 4 = 3.95 / 4 = 0.9875
    loss, stats, grad = run_loss(bound("nsr"))
    assert loss.item() == pytest.approx(0.9875, abs=1e-12)
    assert stats["tokens"].item() == 4
    assert stats["kept"].item() == 2 and stats["dropped"].item() == 1
    assert stats["clipfrac_low"].item() == pytest.approx(0.5)  # r = 0.2 and r = 0.5
    assert stats["clipfrac_high"].item() == 0.0  # r = 1.25 with A < 0 is not a clipped token
    # (0.004689820195675154 + 0.8094379124341002 + 0.1931471805599453 + 0.026856448685790235) / 4
    assert stats["approx_kl"].item() == pytest.approx(0.25853284046887774, abs=1e-12)
    # dloss/dlogp = -A·r / 4 = r / 4 unclipped: row 1: 1.1/4 = 0.275; row 2: 1.25/4 = 0.3125
    expected = t([[0.0, 0.0, 0.0], [0.275, 0.0, 0.0], [0.0, 0.3125, 0.0]])
    torch.testing.assert_close(grad, expected, rtol=0, atol=1e-12)


def test_nsr_threshold():
    # τ = 0.5: A = [0, -1, 0]: row 1 only. (1.1 + 0.8) / 2 = 0.95
    loss, stats, _ = run_loss(bound("nsr", correct_threshold=0.5))
    assert loss.item() == pytest.approx(0.95, abs=1e-12)
    assert stats["kept"].item() == 1 and stats["tokens"].item() == 2


def test_w_reinforce_loss_hand_values():
    # A = [0.1, -1, -1], every row trains, 7 tokens.
    # row 0: 0.1 × (-1 - 1.2 - 0.5) = -0.27; rows 1, 2: 3.95. loss = 3.68 / 7 = 0.5257142857142857
    loss, stats, grad = run_loss(bound("w_reinforce"))
    assert loss.item() == pytest.approx(0.5257142857142857, abs=1e-12)
    assert stats["tokens"].item() == 7
    assert "kept" not in stats and "dropped" not in stats  # nothing is left out
    assert stats["clipfrac_high"].item() == pytest.approx(1 / 7)
    assert stats["clipfrac_low"].item() == pytest.approx(2 / 7)
    # (1.0945348918918355 + 1.034131361875511) / 7
    assert stats["approx_kl"].item() == pytest.approx(0.30409517910962093, abs=1e-12)
    # -A·r / 7: row 0: -0.1/7, 0, -0.05/7; row 1: 1.1/7, 0, 0; row 2: 0, 1.25/7, 0
    expected = t([[-0.1 / 7, 0.0, -0.05 / 7], [1.1 / 7, 0.0, 0.0], [0.0, 1.25 / 7, 0.0]])
    torch.testing.assert_close(grad, expected, rtol=0, atol=1e-12)


def test_w_reinforce_lambda_one_is_plain_reinforce_with_plus_minus_one():
    # λ = 1: row 0 gives -2.7; (-2.7 + 3.95) / 7 = 1.25 / 7 = 0.17857142857142858
    loss, _, _ = run_loss(bound("w_reinforce", positive_advantage_weight=1.0))
    assert loss.item() == pytest.approx(0.17857142857142858, abs=1e-12)


@pytest.mark.parametrize(
    "name,rewards",
    [("psr", [0.0, 0.0, 0.0]), ("nsr", [1.0, 1.0, 1.0])],
)
def test_nothing_to_train_gives_exact_zero(name, rewards):
    # PSR on an all-incorrect batch, NSR on an all-correct one: every row is dropped.
    algo = bound(name)
    assert (
        algo.loss_normalizer(
            algo.advantages(t(rewards), torch.zeros(3)), torch.ones(3, 3), torch.zeros(3)
        ).item()
        == 0.0
    )
    loss, stats, grad = run_loss(algo, rewards=rewards)
    assert loss.item() == 0.0
    assert torch.equal(grad, torch.zeros_like(grad))
    assert stats["tokens"].item() == 0 and stats["kept"].item() == 0
    assert stats["dropped"].item() == 3
    assert all(torch.isfinite(v).all() for v in stats.values())


@pytest.mark.parametrize("name", NAMES)
def test_all_masked_batch_gives_exact_zero_and_no_nan(name):
    algo = bound(name)
    gids = torch.tensor([0, 0, 1])
    adv = algo.advantages(t([1.0, 0.0, 1.0]), gids)
    logp = torch.randn(3, 4, dtype=F64, generator=torch.Generator().manual_seed(0))
    logp.requires_grad_()
    old = torch.full((3, 4), -math.inf, dtype=F64)  # padding may hold anything
    mask = torch.zeros(3, 4, dtype=torch.bool)
    assert algo.loss_normalizer(adv, mask, gids).item() == 0.0
    loss, stats = algo.policy_loss(logp, old, adv, mask, gids)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(logp.grad, torch.zeros_like(logp))
    assert stats["tokens"].item() == 0
    assert all(torch.isfinite(torch.as_tensor(v)).all() for v in stats.values())


@pytest.mark.parametrize("name", NAMES)
def test_garbage_in_dropped_rows_and_padding_is_harmless(name):
    # Padding holds NaN / ±inf log-probs; so does the whole dropped row (PSR: the incorrect
    # row 1, NSR: the correct row 0). W-REINFORCE drops no row.
    algo = bound(name)
    old = t([[-1.0, -2.0, math.nan], [-1.5, -0.3, -math.inf]])
    logp = t([[-1.1, -1.9, math.nan], [-1.4, -0.2, math.inf]])
    dropped = {"psr": 1, "nsr": 0}.get(name)
    if dropped is not None:
        logp[dropped] = math.nan
        old[dropped] = -math.inf
    logp.requires_grad_()
    mask = torch.tensor([[1, 1, 0], [1, 1, 0]], dtype=torch.bool)
    gids = torch.zeros(2)
    loss, stats = algo.policy_loss(logp, old, algo.advantages(t([1.0, 0.0]), gids), mask, gids)
    loss.backward()
    assert torch.isfinite(loss) and loss.item() != 0.0
    assert torch.isfinite(logp.grad).all()
    if dropped is not None:
        assert torch.equal(logp.grad[dropped], torch.zeros(3, dtype=F64))
    assert all(torch.isfinite(v).all() for v in stats.values())


# ======================================================================= gradients, micro-batches
B, T = 8, 6
MB_GROUPS = [3, 8, 3, 8, 3, 8, 3, 8]
MB_REWARDS = [1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 0.6]  # 4 correct, 4 incorrect (one F1 0.6)


def random_minibatch(seed: int = 0, empty_row: bool = True):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    if empty_row:
        lengths[5] = 0  # one empty completion
    mask = torch.arange(T)[None, :] < lengths[:, None]
    old = -torch.rand(B, T, generator=g, dtype=F64) * 3
    logp = old + 0.5 * torch.randn(B, T, generator=g, dtype=F64)
    return logp, old, mask, torch.tensor(MB_GROUPS)


def closed_form_grad(name, logp, old, adv, mask):
    """-A·r/Z on trained, unclipped mask tokens; Z = trained tokens of the mini-batch."""
    rows = {"psr": adv > 0, "nsr": adv < 0, "w_reinforce": torch.ones(B, dtype=torch.bool)}[name]
    m = (mask & rows[:, None]).to(F64)
    r = torch.exp(logp - old)
    a = adv[:, None]
    clipped = ((a > 0) & (r > 1.2)) | ((a < 0) & (r < 0.8))
    return -a * r * (~clipped) * m / m.sum()


@pytest.mark.parametrize("name", NAMES)
def test_gradient_matches_closed_form(name):
    algo = bound(name)
    logp, old, mask, gids = random_minibatch()
    adv = algo.advantages(t(MB_REWARDS), gids)
    logp.requires_grad_()
    loss, stats = algo.policy_loss(logp, old, adv, mask, gids)
    loss.backward()
    assert stats["clipfrac_low"] + stats["clipfrac_high"] > 0  # the data exercises the clip
    expected = closed_form_grad(name, logp.detach(), old, adv, mask)
    torch.testing.assert_close(logp.grad, expected, rtol=0, atol=1e-12)


def loss_and_grad(algo, logp, old, adv, mask, gids, k, pass_normalizer=True):
    """Sum of the losses (and gradient) of k equal micro-batches of the mini-batch."""
    logp = logp.detach().clone().requires_grad_()
    z = algo.loss_normalizer(adv, mask, gids) if pass_normalizer else None
    total = torch.zeros((), dtype=F64)
    for idx in torch.arange(B).chunk(k):
        loss, _ = algo.policy_loss(
            logp[idx], old[idx], adv[idx], mask[idx], gids[idx], normalizer=z
        )
        loss.backward()
        total = total + loss.detach()
    return total, logp.grad


@pytest.mark.parametrize("k", [2, 4, 8])
@pytest.mark.parametrize("name", NAMES)
def test_micro_batches_sum_to_the_mini_batch(name, k):
    algo = bound(name)
    logp, old, mask, gids = random_minibatch()
    adv = algo.advantages(t(MB_REWARDS), gids)
    whole_loss, whole_grad = loss_and_grad(algo, logp, old, adv, mask, gids, k=1)
    assert whole_grad.abs().max() > 1e-3  # a non-trivial gradient
    loss, grad = loss_and_grad(algo, logp, old, adv, mask, gids, k=k)
    assert abs(loss - whole_loss).item() <= 1e-12
    assert (grad - whole_grad).abs().max().item() <= 1e-12


@pytest.mark.parametrize("name", NAMES)
def test_without_the_mini_batch_normalizer_micro_batches_disagree(name):
    algo = bound(name)
    logp, old, mask, gids = random_minibatch()
    adv = algo.advantages(t(MB_REWARDS), gids)
    whole_loss, _ = loss_and_grad(algo, logp, old, adv, mask, gids, k=1)
    loss, _ = loss_and_grad(algo, logp, old, adv, mask, gids, k=4, pass_normalizer=False)
    assert abs(loss - whole_loss).item() > 1e-3


# ============================================================================ reference cross-check
# The reference's math, copied from TianHongZXY/RLVR-Decomposed
# @ a5d4e7c1df6016ebd7396bd6db83d885120adb6d (files named in each docstring).


def ref_masked_mean(values, mask, axis=None):
    """verl/utils/torch_functional.py::masked_mean."""
    return (values * mask).sum(axis=axis) / mask.sum(axis=axis)


def ref_compute_psr_nsr_outcome_advantage(
    token_level_rewards, token_level_scores, eos_mask, gamma, advantage, positive_advantage_weight
):
    """verl/trainer/ppo/core_algos.py::compute_psr_nsr_outcome_advantage."""
    with torch.no_grad():
        returns = torch.zeros_like(token_level_rewards)
        running_return = 0
        correct_idx = token_level_scores.sum(-1) == 1
        incorrect_idx = token_level_scores.sum(-1) == 0

        for t_ in reversed(range(token_level_rewards.shape[1])):
            running_return = token_level_rewards[:, t_] + gamma * running_return
            returns[:, t_] = running_return
            # Reset after EOS
            running_return = running_return * eos_mask[:, t_]

        if advantage == "positive":
            advantages = returns.clone()
        elif advantage == "negative":
            advantages = returns.clone() - 1
        elif advantage == "weighted":
            advantages = returns.clone()
            advantages[correct_idx] *= positive_advantage_weight
            advantages[incorrect_idx] -= 1
        else:
            raise NotImplementedError
        advantages = advantages * eos_mask

    return advantages, returns


def ref_compute_policy_loss(
    old_log_prob,
    log_prob,
    advantages,
    eos_mask,
    cliprange,
    token_level_scores,
    positive_learning_weight=None,
):
    """verl/trainer/ppo/core_algos.py::compute_policy_loss (the pg_loss and pg_clipfrac)."""
    correct_idx = token_level_scores.sum(-1) == 1
    incorrect_idx = token_level_scores.sum(-1) == 0
    negative_approx_kl = log_prob - old_log_prob
    ratio = torch.exp(negative_approx_kl)

    pg_losses = -advantages * ratio
    pg_losses2 = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)

    if positive_learning_weight is not None:
        assert 0 < positive_learning_weight < 1
        pos_pg_losses = pg_losses[correct_idx]
        pos_pg_losses2 = pg_losses2[correct_idx]
        pos_pg_loss = (
            eos_mask[correct_idx].sum()
            / eos_mask.sum()
            * ref_masked_mean(torch.max(pos_pg_losses, pos_pg_losses2), eos_mask[correct_idx])
        )
        neg_pg_losses = pg_losses[incorrect_idx]
        neg_pg_losses2 = pg_losses2[incorrect_idx]
        neg_pg_loss = (
            eos_mask[incorrect_idx].sum()
            / eos_mask.sum()
            * ref_masked_mean(torch.max(neg_pg_losses, neg_pg_losses2), eos_mask[incorrect_idx])
        )
        pg_loss = positive_learning_weight * pos_pg_loss + neg_pg_loss
    else:
        pg_loss = ref_masked_mean(torch.max(pg_losses, pg_losses2), eos_mask)
    pg_clipfrac = ref_masked_mean(torch.gt(pg_losses2, pg_losses).to(ratio.dtype), eos_mask)
    return pg_loss, pg_clipfrac


def ref_pipeline(
    logp,
    old,
    rewards,
    mask,
    advantage,
    positive_advantage_weight=1.0,
    positive_learning_weight=None,
    cliprange=0.2,
):
    """One reference update step on a batch, as ray_trainer.fit + dp_actor run it.

    The naive reward manager writes the score on the last response token; kl_coef = 0, so
    token_level_rewards = token_level_scores; every score must be 0 or 1 (ray_trainer asserts);
    PSR / NSR subset the batch to the correct / incorrect rows *before* compute_advantage.
    Returns (pg_loss, pg_clipfrac, advantages of the subset [n, T], subset rows bool[B]).
    """
    maskf = mask.to(F64)
    lengths = mask.sum(-1)
    scores = torch.zeros_like(maskf)
    scores[torch.arange(len(rewards)), lengths - 1] = rewards
    correct_idx, incorrect_idx = scores.sum(-1) == 1, scores.sum(-1) == 0
    assert bool((correct_idx | incorrect_idx).all())
    rows = {"positive": correct_idx, "negative": incorrect_idx}.get(
        advantage, torch.ones_like(correct_idx)
    )
    adv, _ = ref_compute_psr_nsr_outcome_advantage(
        scores[rows], scores[rows], maskf[rows], 1.0, advantage, positive_advantage_weight
    )
    pg_loss, clipfrac = ref_compute_policy_loss(
        old[rows], logp[rows], adv, maskf[rows], cliprange, scores[rows], positive_learning_weight
    )
    return pg_loss, clipfrac, adv, rows


REF_REWARDS = [1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 0.0]  # the reference's domain: {0, 1}


def ours_on(name, logp, old, mask, rewards=REF_REWARDS, **hparams):
    algo = bound(name, **hparams)
    gids = torch.tensor(MB_GROUPS)
    adv = algo.advantages(t(rewards), gids)
    loss, stats = algo.policy_loss(logp, old, adv, mask, gids)
    return algo, adv, loss, stats


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("name", NAMES)
def test_matches_the_reference_loss_gradient_and_advantage(name, seed):
    logp, old, mask, _ = random_minibatch(seed, empty_row=False)  # the reference needs a token
    logp = logp.requires_grad_()
    ref_loss, ref_clipfrac, ref_adv, rows = ref_pipeline(
        logp, old, t(REF_REWARDS), mask, REF_ADVANTAGE[name], positive_advantage_weight=0.1
    )
    (ref_grad,) = torch.autograd.grad(ref_loss, logp)
    _, adv, loss, stats = ours_on(name, logp, old, mask)
    (grad,) = torch.autograd.grad(loss, logp)
    # the advantage, broadcast over the tokens of the rows the reference trains
    torch.testing.assert_close(adv[rows][:, None] * mask[rows], ref_adv, rtol=0, atol=1e-5)
    assert abs(loss.item() - ref_loss.item()) <= 1e-5
    torch.testing.assert_close(grad, ref_grad, rtol=0, atol=1e-5)  # 0 on the dropped rows too
    clipfrac = (stats["clipfrac_low"] + stats["clipfrac_high"]).item()
    assert clipfrac == pytest.approx(ref_clipfrac.item(), abs=1e-12)
    assert clipfrac > 0  # the data exercises the clip
    if name != "w_reinforce":
        assert stats["kept"].item() == rows.sum().item()


@pytest.mark.parametrize("seed", [0, 1])
def test_w_reinforce_matches_the_reference_loss_side_route(seed):
    # The reference's second W-REINFORCE route: advantage=weighted with weight 1 (A = ±1) and
    # actor.positive_learning_weight = λ inside compute_policy_loss. Same loss.
    logp, old, mask, _ = random_minibatch(seed, empty_row=False)
    logp = logp.requires_grad_()
    ref_loss, _, _, _ = ref_pipeline(
        logp,
        old,
        t(REF_REWARDS),
        mask,
        "weighted",
        positive_advantage_weight=1.0,
        positive_learning_weight=0.1,
    )
    (ref_grad,) = torch.autograd.grad(ref_loss, logp)
    _, _, loss, _ = ours_on("w_reinforce", logp, old, mask)
    (grad,) = torch.autograd.grad(loss, logp)
    assert abs(loss.item() - ref_loss.item()) <= 1e-5
    torch.testing.assert_close(grad, ref_grad, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_reference_micro_batch_weighting_is_a_per_micro_batch_normalizer(name):
    # dp_actor with use_dynamic_bsz (the reference's scripts): each micro-batch j of n_j rows
    # contributes masked_mean_j(ℓ) · n_j / N, N = ppo_mini_batch_size (here a full mini-batch of
    # the subset: N = its rows). That is our loss with
    # normalizer = tokens_j · N / n_j for micro-batch j; our mini-batch normaliser (Σ tokens)
    # gives the mini-batch's token-mean instead, the same only when there is one micro-batch.
    logp, old, mask, _ = random_minibatch(3, empty_row=False)
    algo = bound(name)
    rewards = t(REF_REWARDS)
    _, _, _, rows = ref_pipeline(logp, old, rewards, mask, REF_ADVANTAGE[name], 0.1)
    kept = rows.nonzero().squeeze(-1)
    n_rows = len(kept)
    micro = kept.chunk(2)  # two micro-batches of the subset
    ref_total = 0.0
    ours_total = torch.zeros((), dtype=F64)
    gids = torch.tensor(MB_GROUPS)
    adv = algo.advantages(rewards, gids)
    for idx in micro:
        ref_j, _, _, _ = ref_pipeline(
            logp[idx], old[idx], rewards[idx], mask[idx], REF_ADVANTAGE[name], 0.1
        )
        ref_total += ref_j.item() * len(idx) / n_rows
        z_j = mask[idx].sum() * n_rows / len(idx)
        ours_j, _ = algo.policy_loss(
            logp[idx], old[idx], adv[idx], mask[idx], gids[idx], normalizer=z_j
        )
        assert abs(ours_j.item() - ref_j.item() * len(idx) / n_rows) <= 1e-12
        ours_total += ours_j
    whole, _ = algo.policy_loss(logp, old, adv, mask, gids)  # the mini-batch token-mean
    assert abs(ours_total.item() - ref_total) <= 1e-12
    assert abs(whole.item() - ref_total) > 1e-4  # the documented difference is real here


@pytest.mark.parametrize("name", NAMES)
def test_matches_verl_vanilla_ppo_token_mean_on_the_reference_subset(name):
    # verl 0.9.1's compute_policy_loss_vanilla with token-level advantages (±1, λ) on the rows
    # the reference trains, token-mean, ε = 0.2, and dual-clip switched off (clip_ratio_c huge:
    # the reference fork predates verl's dual-clip) is the same loss.
    verl = pytest.importorskip("verl.trainer.ppo.core_algos")
    omegaconf = pytest.importorskip("omegaconf")
    config = omegaconf.OmegaConf.create(
        {
            "clip_ratio": 0.2,
            "clip_ratio_low": None,
            "clip_ratio_high": None,
            "clip_ratio_c": 1e9,
            "global_batch_info": {},
        }
    )
    logp, old, mask, _ = random_minibatch(4, empty_row=False)
    logp = logp.requires_grad_()
    _, adv, loss, _ = ours_on(name, logp, old, mask)
    (grad,) = torch.autograd.grad(loss, logp)
    _, _, _, rows = ref_pipeline(logp, old, t(REF_REWARDS), mask, REF_ADVANTAGE[name], 0.1)
    maskf = mask[rows].to(F64)
    verl_loss, _ = verl.compute_policy_loss_vanilla(
        old_log_prob=old[rows],
        log_prob=logp[rows],
        advantages=adv[rows][:, None] * maskf,
        response_mask=maskf,
        loss_agg_mode="token-mean",
        config=config,
    )
    (verl_grad,) = torch.autograd.grad(verl_loss, logp)
    assert abs(loss.item() - verl_loss.item()) <= 1e-5
    torch.testing.assert_close(grad, verl_grad, rtol=0, atol=1e-5)
