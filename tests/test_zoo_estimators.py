"""RLOO, REINFORCE++-baseline, OPO and GPG: hand-computed advantages and losses, degenerate
groups, all-masked batches, micro-batch invariance, the completion-length hand-off that OPO and
REINFORCE++ rely on (through the loop's own `Collector.collect`), and cross-checks against verl
0.9.1's core_algos on the same random float64 tensors.

Expected values are literals worked out by hand (the arithmetic is in the comments), never by
calling the code under test. k3(r) = r - 1 - ln r.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

import algorithms
from algorithms.opo import opo_advantages
from algorithms.reinforce_pp import reinforce_pp_advantages

F64 = torch.float64
ZOO = ["rloo", "reinforce_pp", "opo", "gpg"]
PPO_CLIPPED = ["rloo", "reinforce_pp", "opo"]  # the same PPO-clipped token-mean loss
LENGTH_AWARE = ["reinforce_pp", "opo"]  # advantages weigh completions by their length


def bound(name: str, *, G: int = 4, L: int = 6, P: int = 5, **hparams) -> algorithms.Algorithm:
    return algorithms.get(name, **hparams).bind(group_size=G, max_new_tokens=L, max_prompt_len=P)


def t(x, dtype=F64) -> torch.Tensor:
    return torch.tensor(x, dtype=dtype)


def adv_of(algo, rewards, gids, lengths=None):
    """The algorithm's advantages; the length-aware ones get `lengths` explicitly."""
    if algo.name in LENGTH_AWARE:
        return algo.advantages(rewards, gids, lengths=lengths)
    return algo.advantages(rewards, gids)


# ============================================================================ registry, hparams


def test_registered_with_the_papers_defaults():
    defaults = {
        "rloo": {"clip_ratio": 0.2},
        "reinforce_pp": {"clip_ratio": 0.2, "whiten_eps": 1e-8},
        "opo": {"clip_ratio": 0.2},
        "gpg": {"alpha_correction": True, "norm_by_std": False, "adv_eps": 1e-4},
    }
    for name, expected in defaults.items():
        assert name in algorithms.available()
        cls = algorithms.get_class(name)
        assert cls.hparam_defaults() == expected
        assert cls.needs_groups is True
        assert not algorithms.get(name).needs_reference
        with pytest.raises(ValueError, match="group_size"):
            algorithms.get(name).bind(group_size=1, max_new_tokens=8, max_prompt_len=8)


@pytest.mark.parametrize(
    "name,bad",
    [
        ("rloo", {"clip_ratio": 1.5}),
        ("rloo", {"clip_ratio": -0.1}),
        ("opo", {"clip_ratio": 1.0}),
        ("reinforce_pp", {"whiten_eps": -1.0}),
        ("gpg", {"adv_eps": -1e-4}),
    ],
)
def test_bad_hparam_values_are_rejected(name, bad):
    with pytest.raises(algorithms.HyperparameterError, match=next(iter(bad))):
        algorithms.get(name, **bad)


# ============================================================================ advantages by hand
# Completions 0..7 (as tests/test_algorithms.py), groups interleaved and of unequal size:
#   group 5 -> positions 0, 2, 4, 6 with rewards 1, 0, 0, 1
#   group 2 -> positions 1, 3, 5    with rewards 3, 3, 3   (all equal)
#   group 9 -> position 7           with reward  0.7       (a group of one)
REWARDS = [1.0, 3.0, 0.0, 3.0, 0.0, 3.0, 1.0, 0.7]
GROUPS = [5, 2, 5, 2, 5, 2, 5, 9]


def test_rloo_advantage_hand_values():
    # group 5: A = R - mean of the other three: 1 - 1/3 = 2/3, 0 - 2/3 = -2/3.
    # group 2 (all equal) and group 9 (alone): 0.
    adv = bound("rloo").advantages(t(REWARDS), torch.tensor(GROUPS))
    two3 = 2 / 3
    expected = [two3, 0.0, -two3, 0.0, -two3, 0.0, two3, 0.0]
    torch.testing.assert_close(adv, t(expected), rtol=0, atol=1e-12)
    # a group of three, rewards 1, 0, 0.5: 1 - (0 + 0.5)/2 = 0.75, 0 - 0.75 = -0.75,
    # 0.5 - (1 + 0)/2 = 0   (= n/(n-1)·(R - mean) = 1.5·(0.5, -0.5, 0))
    adv = bound("rloo").advantages(t([1.0, 0.0, 0.5]), torch.tensor([4, 4, 4]))
    torch.testing.assert_close(adv, t([0.75, -0.75, 0.0]), rtol=0, atol=1e-12)


# OPO: rows 0..7, lengths |o| given explicitly.
#   group 0 -> rows 0, 1, 3: R = 1, 0, 0    |o| = 2, 4, 2
#   group 2 -> rows 2, 6:    R = 1, 0.5     |o| = 1, 3
#   group 1 -> rows 4, 5:    R = 1, 1       (all equal)
#   group 3 -> row 7:        R = 0.7        (alone)
OPO_R = [1.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.5, 0.7]
OPO_G = [0, 0, 2, 0, 1, 1, 2, 3]
OPO_L = [2.0, 4.0, 1.0, 2.0, 3.0, 5.0, 3.0, 2.0]
# group 0: b = (2·1 + 4·0 + 2·0) / (2 + 4 + 2) = 0.25   -> A = 0.75, -0.25, -0.25
# group 2: b = (1·1 + 3·0.5) / (1 + 3) = 2.5 / 4 = 0.625 -> A = 0.375, -0.125
OPO_A = [0.75, -0.25, 0.375, -0.25, 0.0, 0.0, -0.125, 0.0]
# without lengths every completion weighs 1: group 0: b = 1/3 -> 2/3, -1/3, -1/3;
# group 2: b = 0.75 -> 0.25, -0.25
OPO_A_UNIFORM = [2 / 3, -1 / 3, 0.25, -1 / 3, 0.0, 0.0, -0.25, 0.0]


def test_opo_advantage_hand_values():
    algo = bound("opo")
    adv = algo.advantages(t(OPO_R), torch.tensor(OPO_G), lengths=t(OPO_L))
    torch.testing.assert_close(adv, t(OPO_A), rtol=0, atol=1e-12)
    uniform = bound("opo").advantages(t(OPO_R), torch.tensor(OPO_G))  # no lengths: weights 1
    torch.testing.assert_close(uniform, t(OPO_A_UNIFORM), rtol=0, atol=1e-12)


def test_length_aware_estimators_declare_lengths_and_the_others_do_not():
    # the contract (algorithms/contract.py) reads it from the signature; the loop passes lengths
    assert algorithms.get_class("opo").advantage_lengths
    assert algorithms.get_class("reinforce_pp").advantage_lengths
    assert not algorithms.get_class("grpo").advantage_lengths
    with pytest.raises(ValueError, match=r"lengths must be \[B\]"):
        bound("opo").advantages(t(OPO_R), torch.tensor(OPO_G), lengths=t(OPO_L[:4]))


# REINFORCE++-baseline: rows 0..4.
#   group 0 -> rows 0, 1: R = 1, 0   |o| = 1, 3     a = R - mean = 0.5, -0.5
#   group 1 -> rows 2, 3: R = 1, 1   |o| = 2, 2     a = 0, 0   (all equal)
#   group 2 -> row 4:     R = 0.7    |o| = 2        a = 0      (alone)
# Whitening over the N = 1 + 3 + 2 + 2 + 2 = 10 tokens:
#   μ = (1·0.5 + 3·(-0.5) + 0) / 10 = -0.1;  a - μ = 0.6, -0.4, 0.1, 0.1, 0.1
#   σ² = (1·0.36 + 3·0.16 + 2·0.01 + 2·0.01 + 2·0.01) / (10 - 1) = 0.9 / 9 = 0.1
#   A = (a - μ) / sqrt(0.1 + 1e-8);  1 / sqrt(0.10000001) = 3.1622775020545077
RPP_R = [1.0, 0.0, 1.0, 1.0, 0.7]
RPP_G = [0, 0, 1, 1, 2]
RPP_L = [1.0, 3.0, 2.0, 2.0, 2.0]
RPP_A = [1.8973665012327046, -1.2649110008218032, 0.3162277502054508, 0.3162277502054508,
         0.3162277502054508]  # 0.6·, -0.4·, 0.1·3.1622775020545077  # fmt: skip


def test_reinforce_pp_advantage_hand_values():
    adv = bound("reinforce_pp").advantages(t(RPP_R), torch.tensor(RPP_G), lengths=t(RPP_L))
    torch.testing.assert_close(adv, t(RPP_A), rtol=0, atol=1e-12)
    # whitened over tokens: token-weighted mean 0, unbiased token variance 0.1/(0.1 + 1e-8)
    w = t(RPP_L)
    assert abs((w * adv).sum().item()) < 1e-12
    assert (w * adv**2).sum().item() / 9 == pytest.approx(0.1 / (0.1 + 1e-8), abs=1e-12)
    # the all-equal group and the lone completion get -μ/σ = 0.1·3.16..., not 0: the
    # whitening's mean shift (verl's masked_whiten, OpenRLHF alike)
    # without lengths each completion weighs 1: N = 5, μ = 0, σ² = (0.25 + 0.25) / 4 = 0.125,
    # A = ±0.5 / sqrt(0.125 + 1e-8) = ±1.414213505804556, and 0 for the rest
    uniform = bound("reinforce_pp").advantages(t(RPP_R), torch.tensor(RPP_G))
    s = 1.414213505804556
    torch.testing.assert_close(uniform, t([s, -s, 0.0, 0.0, 0.0]), rtol=0, atol=1e-12)


def test_gpg_advantage_hand_values():
    gids = torch.tensor(GROUPS)
    # B = 8; group 5 has spread (4 completions), groups 2 (all equal) and 9 (alone) do not:
    # B_valid = 4, α = 8 / 4 = 2.  A = 2·(R - 0.5) = ±1 in group 5, 0 elsewhere.
    adv = bound("gpg").advantages(t(REWARDS), gids)
    torch.testing.assert_close(adv, t([1.0, 0, -1.0, 0, -1.0, 0, 1.0, 0]), rtol=0, atol=1e-12)
    # α off: ±0.5
    adv = bound("gpg", alpha_correction=False).advantages(t(REWARDS), gids)
    torch.testing.assert_close(adv, t([0.5, 0, -0.5, 0, -0.5, 0, 0.5, 0]), rtol=0, atol=1e-12)
    # F_norm = std + 1e-4: group 5 std = sqrt(1/3) = 0.5773502691896258;
    # A = 2·0.5 / 0.5774502691896258 = 1.7317508595214028
    adv = bound("gpg", norm_by_std=True).advantages(t(REWARDS), gids)
    a = 1.7317508595214028
    torch.testing.assert_close(adv, t([a, 0, -a, 0, -a, 0, a, 0]), rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", ZOO)
def test_group_of_one_and_all_equal_groups_give_exact_zero_not_nan(name):
    algo = bound(name)
    lengths = t([3.0])
    assert adv_of(algo, t([0.7]), torch.tensor([3]), lengths).tolist() == [0.0]
    # 0.1 is not exact in binary: 0.1 + 0.1 + 0.1 = 0.30000000000000004, so a mean-based
    # formula would leave ~1e-17; all-equal groups are zeroed exactly
    rewards, gids = t([0.1, 0.1, 0.1, 2.0, 2.0]), torch.tensor([1, 1, 1, 4, 4])
    adv = adv_of(algo, rewards, gids, t([1.0, 2.0, 4.0, 3.0, 5.0]))
    assert adv.tolist() == [0.0] * 5
    # integer rewards are accepted
    adv = adv_of(algo, torch.tensor([1, 0]), torch.tensor([0, 0]), t([2.0, 2.0]))
    assert adv.is_floating_point() and torch.isfinite(adv).all()


@pytest.mark.parametrize("name", LENGTH_AWARE)
def test_zero_length_completions_give_finite_advantages(name):
    # a group whose completions are all empty (Σ|o| = 0) and a batch with no token at all
    algo = bound(name)
    adv = algo.advantages(t([1.0, 0.0, 1.0, 0.0]), torch.tensor([0, 0, 1, 1]),
                          lengths=t([0.0, 0.0, 2.0, 1.0]))  # fmt: skip
    assert torch.isfinite(adv).all()
    adv = algo.advantages(t([1.0, 0.0]), torch.tensor([0, 0]), lengths=t([0.0, 0.0]))
    assert torch.isfinite(adv).all()
    if name == "reinforce_pp":
        assert adv.tolist() == [0.0, 0.0]  # nothing to whiten over


# ============================================================================ losses by hand
# B = 2, T = 3 (as tests/test_algorithms.py). r = exp(logp - old_logp):
#   row 0 (A = +1): r = 1.0, 3.0, 0.5       all 3 tokens in the mask
#   row 1 (A = -2): r = 1.1, 0.2, 2.0       mask 1, 1, 0
RATIOS = [[1.0, 3.0, 0.5], [1.1, 0.2, 2.0]]
ADV = [1.0, -2.0]
MASK = [[1, 1, 1], [1, 1, 0]]
OLD = [[-1.0, -2.0, -0.5], [-1.5, -0.3, -2.5]]
# k3 of the 5 mask tokens: 0, 0.9013877113318902, 0.1931471805599453, 0.0046898201956751,
# 0.8094379124341003 -> mean
APPROX_KL = 0.38173252490432213


@pytest.mark.parametrize("name", PPO_CLIPPED)
def test_ppo_clipped_token_mean_loss_hand_values(name):
    # ε = 0.2. Row 0: ℓ = -1, -min(3, 1.2) = -1.2 (high clip), -min(0.5, 0.8) = -0.5.
    # Row 1: ℓ = 2.2, -min(0.2·-2, 0.8·-2) = 1.6 (low clip).
    # token-mean: (-1 - 1.2 - 0.5 + 2.2 + 1.6) / 5 = 1.1 / 5 = 0.22.
    old = t(OLD)
    logp = (old + torch.log(t(RATIOS))).requires_grad_()
    mask = torch.tensor(MASK, dtype=torch.bool)
    loss, stats = bound(name).policy_loss(logp, old, t(ADV), mask, torch.zeros(2))
    loss.backward()
    assert loss.item() == pytest.approx(0.22, abs=1e-12)
    assert stats["clipfrac_high"].item() == pytest.approx(1 / 5)  # the r = 3 token
    assert stats["clipfrac_low"].item() == pytest.approx(1 / 5)  # the r = 0.2 token
    assert stats["approx_kl"].item() == pytest.approx(APPROX_KL, abs=1e-12)
    assert stats["tokens"].item() == 5
    # dloss/dlogp = -A·r / 5 unclipped, 0 clipped or masked:
    #   row 0: -1·1/5 = -0.2, 0, -0.5/5 = -0.1;  row 1: 2·1.1/5 = 0.44, 0, 0.
    torch.testing.assert_close(logp.grad, t([[-0.2, 0, -0.1], [0.44, 0, 0]]), rtol=0, atol=1e-12)


def test_gpg_loss_hand_values():
    # ℓ = -A·logp, no ratio. logp row 0 = -1, -2, -0.5 (A = +1), row 1 = -1.5, -0.3, NaN
    # (A = -2; the NaN is padding). ℓ: 1, 2, 0.5 | -(-2)(-1.5) = -3, -(-2)(-0.3) = -0.6.
    # token-mean: (3.5 - 3.6) / 5 = -0.02.
    logp = t([[-1.0, -2.0, -0.5], [-1.5, -0.3, math.nan]]).requires_grad_()
    old = logp.detach().clone()
    old[0, 0] = -1.0 - math.log(2.0)  # r = 2 on one token: k3 = 2 - 1 - ln 2 = 0.30685...
    mask = torch.tensor(MASK, dtype=torch.bool)
    loss, stats = bound("gpg").policy_loss(logp, old, t(ADV), mask, torch.zeros(2))
    loss.backward()
    assert loss.item() == pytest.approx(-0.02, abs=1e-12)
    assert stats["clipfrac_low"].item() == 0.0 and stats["clipfrac_high"].item() == 0.0
    assert stats["approx_kl"].item() == pytest.approx(0.061370563888010946, abs=1e-12)  # /5
    assert stats["tokens"].item() == 5
    # dloss/dlogp = -A / 5 on mask tokens: -0.2 (row 0), 0.4 (row 1); 0 on the NaN padding
    torch.testing.assert_close(logp.grad, t([[-0.2, -0.2, -0.2], [0.4, 0.4, 0]]), rtol=0,
                               atol=1e-12)  # fmt: skip


@pytest.mark.parametrize("name", ZOO)
def test_all_masked_batch_gives_exact_zero_and_no_nan(name):
    algo = bound(name, G=2)
    gids = torch.tensor([0, 0, 1])
    adv = adv_of(algo, t([1.0, 0.0, 1.0]), gids, t([2.0, 3.0, 1.0]))
    logp = torch.full((3, 4), math.nan, dtype=F64, requires_grad=True)  # padding: anything
    old = torch.full((3, 4), -math.inf, dtype=F64)
    mask = torch.zeros(3, 4, dtype=torch.bool)
    loss, stats = algo.policy_loss(logp, old, adv, mask, gids)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(logp.grad, torch.zeros_like(logp))
    assert stats["tokens"].item() == 0
    assert all(torch.isfinite(torch.as_tensor(v)).all() for v in stats.values())


# ============================================================================ gradients, micro-batches
B, T = 8, 6
MB_GROUPS = [3, 8, 3, 8, 3, 8, 3, 8]  # two groups of 4, interleaved
MB_REWARDS = [1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 0.0]  # group 3: 1,1,0,1  group 8: 0,1,0,0


def random_minibatch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    lengths[5] = 0  # one empty completion
    mask = torch.arange(T)[None, :] < lengths[:, None]
    old = -torch.rand(B, T, generator=g, dtype=F64) * 3
    logp = old + 0.5 * torch.randn(B, T, generator=g, dtype=F64)
    return logp, old, mask, torch.tensor(MB_GROUPS)


@pytest.mark.parametrize("name", ZOO)
def test_gradient_matches_closed_form(name):
    algo = bound(name)
    logp, old, mask, gids = random_minibatch()
    adv = adv_of(algo, t(MB_REWARDS), gids, mask.sum(-1).to(F64))
    logp.requires_grad_()
    loss, stats = algo.policy_loss(logp, old, adv, mask, gids)
    loss.backward()
    m, a = mask.to(F64), adv[:, None]
    if name == "gpg":  # -A·logp: the REINFORCE gradient -A / N, no ratio
        expected = -a * m / m.sum()
    else:  # -A·r / N where the clip is inactive
        assert stats["clipfrac_low"] > 0 and stats["clipfrac_high"] > 0  # the data clips
        r = torch.exp(logp.detach() - old)
        clipped = ((a > 0) & (r > 1.2)) | ((a < 0) & (r < 0.8))
        expected = -a * r * (~clipped) * m / m.sum()
    torch.testing.assert_close(logp.grad, expected, rtol=0, atol=1e-12)


def loss_and_grad(algo, logp, old, adv, mask, gids, k, pass_normalizer=True):
    """Sum of the losses (and gradient) of k equal micro-batches of the mini-batch."""
    logp = logp.detach().clone().requires_grad_()
    z = algo.loss_normalizer(adv, mask, gids) if pass_normalizer else None
    total = torch.zeros((), dtype=F64)
    for idx in torch.arange(B).chunk(k):
        loss, _ = algo.policy_loss(logp[idx], old[idx], adv[idx], mask[idx], gids[idx],
                                   normalizer=z)  # fmt: skip
        loss.backward()
        total = total + loss.detach()
    return total, logp.grad


@pytest.mark.parametrize("k", [2, 4, 8])
@pytest.mark.parametrize("name", ZOO)
def test_micro_batches_sum_to_the_mini_batch(name, k):
    algo = bound(name)
    logp, old, mask, gids = random_minibatch()
    adv = adv_of(algo, t(MB_REWARDS), gids, mask.sum(-1).to(F64))
    whole_loss, whole_grad = loss_and_grad(algo, logp, old, adv, mask, gids, k=1)
    assert whole_grad.abs().max() > 1e-3  # a non-trivial gradient
    loss, grad = loss_and_grad(algo, logp, old, adv, mask, gids, k=k)
    assert abs(loss - whole_loss).item() <= 1e-6
    assert (grad - whole_grad).abs().max().item() <= 1e-6


@pytest.mark.parametrize("name", ZOO)
def test_without_the_mini_batch_normalizer_micro_batches_disagree(name):
    # the test above is sensitive: each micro-batch normalising by itself changes the loss
    algo = bound(name)
    logp, old, mask, gids = random_minibatch()
    adv = adv_of(algo, t(MB_REWARDS), gids, mask.sum(-1).to(F64))
    whole_loss, _ = loss_and_grad(algo, logp, old, adv, mask, gids, k=1)
    loss, _ = loss_and_grad(algo, logp, old, adv, mask, gids, k=4, pass_normalizer=False)
    assert abs(loss - whole_loss).item() > 1e-3


# ============================================================================ lengths through the loop


def collect_through_the_loop(algo, rewards: list[float], lengths: list[int], G: int):
    """Run the loop's own `Collector.collect` (rlvr/collect.py) with a fake engine whose completions
    have `lengths` tokens and a fake verifier returning `rewards`; then the advantages call
    `Trainer.train_step` makes (`Trainer.advantages`). Returns (batch, adv)."""
    from rlvr.collect import Collector
    from rlvr.rollout.base import Rollouts
    from rlvr.train import Trainer

    n_prompts, width = len(rewards) // G, max(lengths)

    def generate(prompts, n, seeds):
        N = len(prompts) * n
        mask = (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).float()
        return Rollouts(
            prompt_ids=torch.ones(N, 2, dtype=torch.long),
            prompt_mask=torch.ones(N, 2, dtype=torch.long),
            completion_ids=torch.ones(N, width, dtype=torch.long),
            completion_mask=mask,
            sampling_logp=torch.zeros(N, width),
            truncated=torch.zeros(N, dtype=torch.bool),
            texts=[""] * N,
        )

    cfg = SimpleNamespace(
        rollout=SimpleNamespace(prompts_per_step=n_prompts, group_size=G),
        seed=0,
        algorithm=SimpleNamespace(name=algo.name),
    )
    records = [SimpleNamespace(prompt=f"p{i}", answer="") for i in range(n_prompts)]
    scripted = iter(rewards)
    collector = Collector(cfg, records, lambda text, answer: next(scripted), algo,
                          SimpleNamespace(generate=generate), pad_id=0)  # fmt: skip
    collector.sampler = SimpleNamespace(next=lambda n: list(range(n)))
    batch, _ = collector.collect(0)
    fake = SimpleNamespace(algo=algo)
    return batch, Trainer.advantages(fake, batch)


@pytest.mark.parametrize("name", LENGTH_AWARE)
def test_the_loop_hands_the_lengths_of_the_same_rows_to_advantages(name):
    # rlvr/train.py: collect the kept rows, then Trainer.advantages passes their lengths.
    # Two prompts, G = 4; lengths differ within each group.
    rewards = [1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.5, 0.0]
    lengths = [2, 5, 1, 3, 4, 1, 6, 2]
    algo = bound(name)
    batch, adv = collect_through_the_loop(algo, rewards, lengths, G=4)
    assert batch.rollouts.lengths.tolist() == lengths
    explicit = algo.advantages(batch.rewards, batch.group_ids, lengths=t(lengths))
    torch.testing.assert_close(adv, explicit.to(adv), rtol=0, atol=1e-6)
    uniform = bound(name).advantages(batch.rewards, batch.group_ids)  # no lengths
    assert (adv - uniform).abs().max() > 1e-2  # the lengths really were used
    if name == "opo":
        # group 0: b = (2·1 + 3·1) / (2 + 5 + 1 + 3) = 5/11 -> A = 6/11, -5/11, -5/11, 6/11
        # group 1: b = (1·1 + 6·0.5) / (4 + 1 + 6 + 2) = 4/13 -> -4/13, 9/13, 2.5/13, -4/13
        expected = [6 / 11, -5 / 11, -5 / 11, 6 / 11, -4 / 13, 9 / 13, 2.5 / 13, -4 / 13]
        torch.testing.assert_close(adv, torch.tensor(expected), rtol=0, atol=1e-6)


# ============================================================================ verl cross-checks


@pytest.fixture(scope="module")
def verl():
    return pytest.importorskip("verl.trainer.ppo.core_algos")


@pytest.fixture(scope="module")
def actor_config():
    """The smallest verl ActorConfig compute_policy_loss_vanilla / _gpg accept (ε = 0.2; its
    dual-clip is switched off with clip_ratio_c = 1e9, see test_verl_dual_clip_...)."""
    config = pytest.importorskip("verl.workers.config")

    def make(clip_ratio_c: float = 1e9):
        return config.ActorConfig(
            strategy="fsdp",
            rollout_n=1,
            ppo_micro_batch_size_per_gpu=1,
            clip_ratio=0.2,
            clip_ratio_low=0.2,
            clip_ratio_high=0.2,
            clip_ratio_c=clip_ratio_c,
        )

    return make


def verl_batch(seed: int, sizes=(4, 4, 3, 5, 2), width: int = 7, lone: bool = False):
    """Random float64 rewards in shuffled (non-contiguous) groups of `sizes`; group 0 all equal;
    lengths 1..width. Returns rewards[B], gids[B], mask[B, T] and verl's token_level_rewards
    (the reward on each completion's last token)."""
    g = torch.Generator().manual_seed(seed)
    sizes = (*sizes, 1) if lone else sizes
    gids = torch.cat([torch.full((n,), 10 + i) for i, n in enumerate(sizes)])
    gids = gids[torch.randperm(len(gids), generator=g)]
    n = len(gids)
    rewards = torch.rand(n, generator=g, dtype=F64).round(decimals=1) + torch.randint(
        0, 2, (n,), generator=g
    ).to(F64)
    rewards[gids == 10] = 1.0
    lengths = torch.randint(1, width + 1, (n,), generator=g)
    mask = (torch.arange(width)[None, :] < lengths[:, None]).to(F64)
    token_rewards = torch.zeros(n, width, dtype=F64)
    token_rewards[torch.arange(n), lengths - 1] = rewards
    return rewards, gids, mask, token_rewards


def per_token(adv: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return adv[:, None] * mask


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rloo_advantages_match_verl(verl, seed):
    rewards, gids, mask, tok = verl_batch(seed)
    ours = per_token(bound("rloo").advantages(rewards, gids), mask)
    for fn in (verl.compute_rloo_outcome_advantage, verl.compute_rloo_vectorized_outcome_advantage):
        theirs, _ = fn(tok.clone(), mask, gids.numpy())
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
    # a group of one: verl `rloo` keeps A = R, `rloo_vectorized` gives 0, as we do
    rewards, gids, mask, tok = verl_batch(seed, lone=True)
    lone = gids == gids.max()
    ours = bound("rloo").advantages(rewards, gids)
    theirs, _ = verl.compute_rloo_outcome_advantage(tok.clone(), mask, gids.numpy())
    vec, _ = verl.compute_rloo_vectorized_outcome_advantage(tok.clone(), mask, gids.numpy())
    assert ours[lone].tolist() == [0.0] and vec[lone].abs().max() == 0
    torch.testing.assert_close(theirs[lone][:, 0], rewards[lone], rtol=0, atol=1e-12)
    torch.testing.assert_close(per_token(ours, mask)[~lone], theirs[~lone], rtol=0, atol=1e-5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_reinforce_pp_advantages_match_verl(verl, seed):
    rewards, gids, mask, tok = verl_batch(seed)
    algo = bound("reinforce_pp")
    ours = per_token(algo.advantages(rewards, gids, lengths=mask.sum(-1)), mask)
    theirs, _ = verl.compute_reinforce_plus_plus_baseline_outcome_advantage(
        tok.clone(), mask, gids.numpy()
    )
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
    # a group of one: verl centres it on 0 (a = R), we on itself (a = 0); with its reward set
    # to 0 the two agree, so that is the only difference
    rewards, gids, mask, tok = verl_batch(seed, lone=True)
    lone = gids == gids.max()
    ours = per_token(algo.advantages(rewards, gids, lengths=mask.sum(-1)), mask)
    tok[lone] = 0.0
    theirs, _ = verl.compute_reinforce_plus_plus_baseline_outcome_advantage(tok, mask, gids.numpy())
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_opo_advantages_match_verl(verl, seed):
    rewards, gids, mask, tok = verl_batch(seed)
    ours = per_token(bound("opo").advantages(rewards, gids, lengths=mask.sum(-1)), mask)
    theirs, _ = verl.compute_opo_outcome_advantage(tok.clone(), mask, gids.numpy())
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
    # the length weighting matters on this data (the plain group mean is another estimator)
    plain = per_token(opo_advantages(rewards, gids), mask)
    assert (plain - theirs).abs().max() > 1e-2
    # a group of one: verl's baseline is 0 (A = R), ours is 0
    rewards, gids, mask, tok = verl_batch(seed, lone=True)
    lone = gids == gids.max()
    ours = bound("opo").advantages(rewards, gids, lengths=mask.sum(-1))
    theirs, _ = verl.compute_opo_outcome_advantage(tok.clone(), mask, gids.numpy())
    assert ours[lone].tolist() == [0.0]
    torch.testing.assert_close(theirs[lone][:, 0], rewards[lone], rtol=0, atol=1e-12)
    torch.testing.assert_close(per_token(ours, mask)[~lone], theirs[~lone], rtol=0, atol=1e-5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gpg_advantages_match_verl_up_to_the_documented_alpha(verl, seed):
    rewards, gids, mask, tok = verl_batch(seed)
    ours = per_token(bound("gpg").advantages(rewards, gids), mask)
    theirs, _ = verl.compute_gpg_outcome_advantage(tok.clone(), mask, gids.numpy())
    n = len(rewards)
    alpha_ours = n / (gids != 10).sum().item()  # group 10 is the only all-equal group
    alpha_verl = n / torch.count_nonzero(rewards).item()  # verl: completions with R != 0
    assert alpha_ours != pytest.approx(alpha_verl)  # the data shows the difference
    torch.testing.assert_close(ours / alpha_ours, theirs / alpha_verl, rtol=0, atol=1e-5)
    # where the two counts coincide, the advantages are equal as they are
    rewards = t([1.0, 0.5, 2.0, 1.5, 0.0, 0.0])  # nonzero: 4 = valid: 4 (group 1 is all 0)
    gids = torch.tensor([0, 0, 0, 0, 1, 1])
    mask = torch.ones(6, 3, dtype=F64)
    tok = torch.zeros(6, 3, dtype=F64)
    tok[:, -1] = rewards
    ours = per_token(bound("gpg").advantages(rewards, gids), mask)
    theirs, _ = verl.compute_gpg_outcome_advantage(tok, mask, gids.numpy())
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-12)


def verl_loss_inputs(seed: int, width: int = 9):
    """Random float64 log-probs (ratios well outside [0.8, 1.2] both ways), advantages of both
    signs, ragged masks; the same tensors go to verl and to us."""
    g = torch.Generator().manual_seed(seed)
    n = 10
    lengths = torch.randint(1, width + 1, (n,), generator=g)
    mask = (torch.arange(width)[None, :] < lengths[:, None]).to(F64)
    old = -torch.rand(n, width, generator=g, dtype=F64) * 3
    logp = old + 0.6 * torch.randn(n, width, generator=g, dtype=F64)
    adv = torch.randn(n, generator=g, dtype=F64)
    return logp, old, adv, mask, torch.arange(n) // 2


def ours_and_verl(name, verl_fn, config, logp, old, adv, mask, gids, normalizer=None):
    mine = logp.clone().requires_grad_()
    loss, stats = bound(name).policy_loss(mine, old, adv, mask, gids, normalizer=normalizer)
    loss.backward()
    theirs_logp = logp.clone().requires_grad_()
    theirs, metrics = verl_fn(
        old_log_prob=old,
        log_prob=theirs_logp,
        advantages=per_token(adv, mask),
        response_mask=mask,
        loss_agg_mode="token-mean",
        config=config,
    )
    theirs.backward()
    return (loss, mine.grad, stats), (theirs, theirs_logp.grad, metrics)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("name", PPO_CLIPPED)
def test_ppo_clipped_loss_matches_verl_vanilla(verl, actor_config, name, seed):
    inputs = verl_loss_inputs(seed)
    mask = inputs[3]
    for z in (None, mask.sum()):  # our normaliser = verl's whole-batch token count
        (loss, grad, stats), (v_loss, v_grad, metrics) = ours_and_verl(
            name, verl.compute_policy_loss_vanilla, actor_config(), *inputs, normalizer=z
        )
        torch.testing.assert_close(loss, v_loss, rtol=0, atol=1e-5)
        torch.testing.assert_close(grad, v_grad, rtol=0, atol=1e-5)
        clipfrac = (stats["clipfrac_low"] + stats["clipfrac_high"]).item()
        assert clipfrac > 0 and clipfrac == pytest.approx(metrics["actor/pg_clipfrac"], abs=1e-6)


@pytest.mark.parametrize("name", PPO_CLIPPED)
def test_verl_dual_clip_is_the_only_difference_from_verl_defaults(verl, actor_config, name):
    # verl's default clip_ratio_c = 3 caps ℓ at 3|A| for A < 0: on tokens with A < 0 and
    # r > 3 verl's ℓ is the constant 3|A| (zero gradient), ours is |A|·r (gradient |A|·r / N).
    logp, old, adv, mask, gids = verl_loss_inputs(0)
    neg = (adv < 0).nonzero().squeeze(-1)[:2]
    logp[neg, 0] = old[neg, 0] + math.log(4.0)  # r = 4 > 3 on the first token of two A < 0 rows
    r = torch.exp(logp - old)
    dual = (adv[:, None] < 0) & (r > 3) & mask.bool()
    assert dual.sum() >= 2
    (loss, grad, _), (v_loss, v_grad, _) = ours_and_verl(
        name, verl.compute_policy_loss_vanilla, actor_config(3.0), logp, old, adv, mask, gids
    )
    a = adv.abs()[:, None].expand_as(r)
    expected_gap = ((3 * a - a * r) * dual).sum() / mask.sum()
    torch.testing.assert_close(v_loss - loss, expected_gap, rtol=0, atol=1e-5)
    torch.testing.assert_close(grad * ~dual, v_grad, rtol=0, atol=1e-5)
    assert (grad[dual] > 0).all()


@pytest.mark.parametrize("seed", [0, 1])
def test_gpg_loss_matches_verl(verl, actor_config, seed):
    inputs = verl_loss_inputs(seed)
    mask = inputs[3]
    for z in (None, mask.sum()):
        (loss, grad, stats), (v_loss, v_grad, _) = ours_and_verl(
            "gpg", verl.compute_policy_loss_gpg, actor_config(), *inputs, normalizer=z
        )
        torch.testing.assert_close(loss, v_loss, rtol=0, atol=1e-5)
        torch.testing.assert_close(grad, v_grad, rtol=0, atol=1e-5)
        assert stats["clipfrac_low"].item() == 0.0 and stats["clipfrac_high"].item() == 0.0


def test_gpg_end_to_end_with_verl_on_data_where_alpha_agrees(verl, actor_config):
    # advantages and loss together: nonzero rewards = valid completions, so α agrees
    rewards = t([1.0, 0.5, 2.0, 1.5, 0.0, 0.0])
    gids = torch.tensor([0, 0, 0, 0, 1, 1])
    logp, old, _, mask, _ = verl_loss_inputs(3)
    logp, old, mask = logp[:6], old[:6], mask[:6]
    tok = torch.zeros_like(mask)
    tok[torch.arange(6), mask.sum(-1).long() - 1] = rewards
    v_adv, _ = verl.compute_gpg_outcome_advantage(tok, mask, gids.numpy())
    adv = bound("gpg").advantages(rewards, gids)
    (loss, grad, _), (v_loss, v_grad, _) = ours_and_verl(
        "gpg", verl.compute_policy_loss_gpg, actor_config(), logp, old, adv, mask, gids
    )
    torch.testing.assert_close(per_token(adv, mask), v_adv, rtol=0, atol=1e-12)
    torch.testing.assert_close(loss, v_loss, rtol=0, atol=1e-5)
    torch.testing.assert_close(grad, v_grad, rtol=0, atol=1e-5)


def test_reinforce_pp_whitening_needs_the_lengths_to_match_verl(verl):
    # without lengths we whiten over completions: verl whitens over tokens, so ragged lengths
    # make them differ (this is why the lengths hand-off exists)
    rewards, gids, mask, tok = verl_batch(0)
    theirs, _ = verl.compute_reinforce_plus_plus_baseline_outcome_advantage(
        tok.clone(), mask, gids.numpy()
    )
    uniform = per_token(reinforce_pp_advantages(rewards, gids), mask)
    assert (uniform - theirs).abs().max() > 1e-2
