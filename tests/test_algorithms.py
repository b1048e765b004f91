"""The algorithm registry and the four reference algorithms, checked against hand-computed numbers.

Expected values are literals worked out by hand (the arithmetic is in the comments), never by
calling the code under test. k3(r) = r - 1 - ln r.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

import algorithms
from algorithms import registry

F64 = torch.float64
BUILTINS = ["dapo", "dr_grpo", "grpo", "wapo"]


def bound(name: str, *, G: int = 4, L: int = 6, P: int = 5, **hparams) -> algorithms.Algorithm:
    return algorithms.get(name, **hparams).bind(group_size=G, max_new_tokens=L, max_prompt_len=P)


def t(x, dtype=F64) -> torch.Tensor:
    return torch.tensor(x, dtype=dtype)


# ============================================================================ advantages
# Completions 0..7, groups interleaved and of unequal size:
#   group 5 -> positions 0, 2, 4, 6 with rewards 1, 0, 0, 1
#   group 2 -> positions 1, 3, 5    with rewards 3, 3, 3   (all equal)
#   group 9 -> position 7           with reward  0.7       (a group of one)
REWARDS = [1.0, 3.0, 0.0, 3.0, 0.0, 3.0, 1.0, 0.7]
GROUPS = [5, 2, 5, 2, 5, 2, 5, 9]
# group 5: mean 0.5; unbiased var = 4 * 0.25 / 3 = 1/3; std = 0.5773502691896258;
# A = ±0.5 / (0.5773502691896258 + 1e-6) = ±0.8660239037870368
A_STD = 0.8660239037870368


@pytest.mark.parametrize("name", ["grpo", "dapo"])
def test_grpo_advantage_hand_values(name):
    adv = bound(name).advantages(t(REWARDS), torch.tensor(GROUPS))
    expected = [A_STD, 0.0, -A_STD, 0.0, -A_STD, 0.0, A_STD, 0.0]
    torch.testing.assert_close(adv, t(expected), rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", ["dr_grpo", "wapo"])
def test_mean_centred_advantage_hand_values(name):
    adv = bound(name).advantages(t(REWARDS), torch.tensor(GROUPS))
    expected = [0.5, 0.0, -0.5, 0.0, -0.5, 0.0, 0.5, 0.0]
    torch.testing.assert_close(adv, t(expected), rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", BUILTINS)
def test_group_of_one_and_all_equal_group_give_zero_not_nan(name):
    algo = bound(name)
    assert algo.advantages(t([0.7]), torch.tensor([3])).tolist() == [0.0]
    assert algo.advantages(t([2.0, 2.0, 2.0]), torch.tensor([1, 1, 1])).tolist() == [0.0] * 3


def test_integer_rewards_are_accepted():
    adv = bound("dr_grpo").advantages(torch.tensor([1, 0]), torch.tensor([0, 0]))
    assert adv.is_floating_point() and adv.tolist() == [0.5, -0.5]


# ============================================================================ losses
# B = 2, T = 3. Ratios r = exp(logp - old_logp), chosen far outside [0.8, 1.28] on both sides:
#   row 0 (A = +1): r = 1.0, 3.0, 0.5       all 3 tokens in the mask
#   row 1 (A = -2): r = 1.1, 0.2, 2.0       mask 1, 1, 0 (the r = 2.0 token, which would add
#                                           an unclipped ℓ = 4, is padding)
RATIOS = [[1.0, 3.0, 0.5], [1.1, 0.2, 2.0]]
ADV = [1.0, -2.0]
MASK = [[1, 1, 1], [1, 1, 0]]
OLD = [[-1.0, -2.0, -0.5], [-1.5, -0.3, -2.5]]
# approx_kl = mean over the 5 mask tokens of k3:
#   k3(1) = 0, k3(3) = 0.9013877113318902, k3(0.5) = 0.1931471805599453,
#   k3(1.1) = 0.0046898201956751, k3(0.2) = 0.8094379124341003  -> sum / 5
APPROX_KL = 0.38173252490432213


def loss_inputs(ratios=RATIOS, adv=ADV, mask=MASK, old=OLD):
    old = t(old)
    logp = (old + torch.log(t(ratios))).requires_grad_()
    return logp, old, t(adv), torch.tensor(mask, dtype=torch.bool), torch.zeros(len(adv))


def run_loss(algo, **kw):
    logp, old, adv, mask, gids = loss_inputs()
    loss, stats = algo.policy_loss(logp, old, adv, mask, gids, **kw)
    loss.backward()
    return loss, stats, logp.grad


def test_grpo_loss_hand_values():
    # ε = 0.2. Row 0: ℓ = -1, -min(3, 1.2) = -1.2 (high clip), -min(0.5, 0.8) = -0.5;
    #   mean over |o| = 3: -2.7 / 3 = -0.9.
    # Row 1: ℓ = 2.2; -min(0.2·-2, 0.8·-2) = 1.6 (low clip); mean over |o| = 2: 3.8 / 2 = 1.9.
    # loss = (-0.9 + 1.9) / 2 = 0.5.
    loss, stats, grad = run_loss(bound("grpo"))
    assert loss.item() == pytest.approx(0.5, abs=1e-12)
    assert stats["clipfrac_high"].item() == pytest.approx(1 / 5)  # the r = 3 token
    assert stats["clipfrac_low"].item() == pytest.approx(1 / 5)  # the r = 0.2 token
    assert stats["approx_kl"].item() == pytest.approx(APPROX_KL, abs=1e-12)
    assert stats["tokens"].item() == 5
    assert "kl_ref" not in stats
    # dloss/dlogp = -A·r / (|o_i|·N) unclipped, 0 clipped or masked (N = 2):
    #   row 0: -1·1/(3·2) = -1/6, 0, -0.5/6 = -1/12;  row 1: 2·1.1/(2·2) = 0.55, 0, 0.
    torch.testing.assert_close(grad, t([[-1 / 6, 0, -1 / 12], [0.55, 0, 0]]), rtol=0, atol=1e-12)


def test_dr_grpo_loss_hand_values():
    # Same ℓ as GRPO; loss = Σℓm / (B·L) = (-2.7 + 3.8) / (2·4) = 0.1375.
    loss, stats, grad = run_loss(bound("dr_grpo", G=2, L=4))
    assert loss.item() == pytest.approx(0.1375, abs=1e-12)
    assert stats["clipfrac_high"].item() == pytest.approx(0.2)
    assert stats["clipfrac_low"].item() == pytest.approx(0.2)
    # grad = -A·r / 8: row 0: -0.125, 0, -0.0625; row 1: 2.2 / 8 = 0.275, 0, 0.
    torch.testing.assert_close(grad, t([[-0.125, 0, -0.0625], [0.275, 0, 0]]), rtol=0, atol=1e-12)


def test_dapo_loss_hand_values():
    # ε_low = 0.2, ε_high = 0.28. Row 0: -1, -min(3, 1.28) = -1.28, -0.5. Row 1: 2.2, 1.6.
    # token-mean: (-1 - 1.28 - 0.5 + 2.2 + 1.6) / 5 = 1.02 / 5 = 0.204.
    loss, stats, grad = run_loss(bound("dapo"))
    assert loss.item() == pytest.approx(0.204, abs=1e-12)
    assert stats["clipfrac_high"].item() == pytest.approx(0.2)
    assert stats["clipfrac_low"].item() == pytest.approx(0.2)
    # grad = -A·r / 5: row 0: -0.2, 0, -0.1; row 1: 0.44, 0, 0.
    torch.testing.assert_close(grad, t([[-0.2, 0, -0.1], [0.44, 0, 0]]), rtol=0, atol=1e-12)


def test_clip_higher_only_changes_the_high_side():
    # ε_high = 2.5 > r - 1 = 2: nothing is high-clipped; row 0 becomes -1 - 3 - 0.5 = -4.5.
    # loss = (-4.5 + 3.8) / 5 = -0.14; the r = 3 token now has gradient -1·3/5 = -0.6.
    loss, stats, grad = run_loss(bound("dapo", clip_ratio_high=2.5))
    assert loss.item() == pytest.approx(-0.14, abs=1e-12)
    assert stats["clipfrac_high"].item() == 0.0
    assert grad[0, 1].item() == pytest.approx(-0.6, abs=1e-12)


@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "dapo"])
def test_zero_advantage_tokens_are_not_counted_as_clipped(name):
    # A = 0 with r = 3 and 0.2: both branches are 0, the clip changes nothing (verl: gt, not ge).
    logp, old, _, mask, gids = loss_inputs(adv=[0.0, 0.0])
    _, stats = bound(name, G=2, L=4).policy_loss(logp, old, t([0.0, 0.0]), mask, gids)
    assert stats["clipfrac_low"].item() == 0.0 and stats["clipfrac_high"].item() == 0.0


def test_wapo_loss_hand_values():
    # groups 0: rewards 1, 0 -> A = +0.5, -0.5;  group 1: rewards 1, 1 -> A = 0, 0.
    # Only completion 0 is a winner; n_pos = 1. G = 2, L_seq = P + L = 2 + 3 = 5 -> Z = 10.
    algo = bound("wapo", G=2, L=3, P=2)
    adv = algo.advantages(t([1.0, 0.0, 1.0, 1.0]), torch.tensor([0, 0, 1, 1]))
    assert adv.tolist() == [0.5, -0.5, 0.0, 0.0]
    ratios = [[12.0, 1.5, 0.05], [2.0, 0.3, 1.0], [2.0, 0.3, 1.0], [2.0, 0.3, 1.0]]
    old = torch.full((4, 3), -1.0, dtype=F64)
    logp = (old + torch.log(t(ratios))).requires_grad_()
    mask = torch.ones(4, 3, dtype=torch.bool)
    loss, stats = algo.policy_loss(logp, old, adv, mask, torch.tensor([0, 0, 1, 1]))
    loss.backward()
    # ℓ = -min(r, 10)·0.5: -5, -0.75, -0.025 (no lower clip at r = 0.05) -> -5.775 / 10.
    assert loss.item() == pytest.approx(-0.5775, abs=1e-12)
    assert stats["kept"].item() == 1 and stats["dropped"].item() == 3
    assert stats["tokens"].item() == 3  # the winner's tokens only
    assert stats["clipfrac_high"].item() == pytest.approx(1 / 3)  # r = 12 > 10
    assert stats["clipfrac_low"].item() == 0.0
    # grad = -A·r / 10 unclipped: 0 (capped), -0.5·1.5/10 = -0.075, -0.5·0.05/10 = -0.0025.
    expected = torch.zeros(4, 3, dtype=F64)
    expected[0] = t([0.0, -0.075, -0.0025])
    torch.testing.assert_close(logp.grad, expected, rtol=0, atol=1e-12)


def test_wapo_normalizer_counts_groups_with_a_winner():
    # groups 0 and 2 have a winner, group 1 (all equal) has none: n_pos = 2.
    # G·L_seq·n_pos = 4 · (5 + 6) · 2 = 88.
    adv = t([0.5, -0.5, 0.0, 0.0, 1.0, -1.0])
    z = bound("wapo").loss_normalizer(adv, torch.ones(6, 2), torch.tensor([0, 0, 1, 1, 2, 2]))
    assert z.item() == 88.0


def test_grpo_kl_to_reference_hand_values():
    # One completion, A = +1, r = 1 on both tokens; ref - logp = ln 2, 0.
    # k3 = 2 - ln 2 - 1 = 0.30685281944005, 0.  β = 0.1.
    # loss = ((-1 + 0.030685281944) + (-1 + 0)) / 2 = -0.9846573590279972
    # dℓ/dlogp = -A·r + β·(1 - exp(ref - logp)): -1 + 0.1·(1 - 2) = -1.1, -1; times 1/|o| = 1/2.
    algo = bound("grpo", kl_coef=0.1)
    assert algo.needs_reference and not bound("grpo").needs_reference
    logp = t([[-1.0, -2.0]]).requires_grad_()
    ref = t([[-1.0 + math.log(2.0), -2.0]])
    args = (logp, logp.detach().clone(), t([1.0]), torch.ones(1, 2), torch.zeros(1))
    loss, stats = algo.policy_loss(*args, ref_logp=ref)
    loss.backward()
    assert loss.item() == pytest.approx(-0.9846573590279972, abs=1e-12)
    assert stats["kl_ref"].item() == pytest.approx(0.15342640972002736, abs=1e-12)
    torch.testing.assert_close(logp.grad, t([[-0.55, -0.5]]), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="ref_logp"):
        algo.policy_loss(*args)


@pytest.mark.parametrize(
    "name,hparams",
    [("grpo", {}), ("grpo", {"kl_coef": 0.1}), ("dr_grpo", {}), ("dapo", {}), ("wapo", {})],
)
def test_all_masked_batch_gives_exact_zero_and_no_nan(name, hparams):
    algo = bound(name, G=2, **hparams)
    gids = torch.tensor([0, 0, 1])
    adv = algo.advantages(t([1.0, 0.0, 1.0]), gids)
    logp = torch.randn(3, 4, dtype=F64, generator=torch.Generator().manual_seed(0))
    logp.requires_grad_()
    old = torch.full((3, 4), -math.inf, dtype=F64)  # padding may hold anything
    ref = torch.full((3, 4), math.nan, dtype=F64)
    mask = torch.zeros(3, 4, dtype=torch.bool)
    loss, stats = algo.policy_loss(logp, old, adv, mask, gids, ref_logp=ref)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(logp.grad, torch.zeros_like(logp))
    assert stats["tokens"].item() == 0
    assert all(torch.isfinite(torch.as_tensor(v)).all() for v in stats.values())


# ============================================================================ gradients, micro-batches
B, T = 8, 6
MB_GROUPS = [3, 8, 3, 8, 3, 8, 3, 8]  # two groups of 4, interleaved
MB_REWARDS = [1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 0.0]  # group 3: 1,1,0,1  group 8: 0,1,0,0
CASES = [("grpo", {}), ("grpo", {"kl_coef": 0.05}), ("dr_grpo", {}), ("dapo", {}), ("wapo", {})]


def random_minibatch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    lengths[5] = 0  # one empty completion
    mask = torch.arange(T)[None, :] < lengths[:, None]
    old = -torch.rand(B, T, generator=g, dtype=F64) * 3
    logp = old + 0.5 * torch.randn(B, T, generator=g, dtype=F64)
    ref = old + 0.3 * torch.randn(B, T, generator=g, dtype=F64)
    return logp, old, ref, mask, torch.tensor(MB_GROUPS)


def closed_form_grad(name, hp, logp, old, ref, adv, mask):
    """dloss/dlogp written from the formulas: -A·r·w_i/Z where the clip is inactive."""
    m = mask.to(F64)
    r = torch.exp(logp - old)
    n_tok = m.sum(1)
    a = adv[:, None]
    if name == "grpo":
        lo, hi, w, z = 0.8, 1.2, 1 / n_tok.clamp(min=1), (n_tok > 0).sum()
    elif name == "dr_grpo":
        # L = 6; B counts completions with a token (row 5 is empty: as one the loop dropped)
        lo, hi, w, z = 0.8, 1.2, torch.ones(B, dtype=F64), (n_tok > 0).sum() * 6
    elif name == "dapo":
        lo, hi, w, z = 0.8, 1.28, torch.ones(B, dtype=F64), m.sum()
    else:  # wapo: winners only; Z = G·(P + L)·n_pos = 4·11·2 (both groups have a winner)
        lo, hi, w, z = -math.inf, 10.0, (adv > 0).to(F64), 4 * 11 * 2
    clipped = ((a > 0) & (r > hi)) | ((a < 0) & (r < lo))
    grad = -a * r * (~clipped) * w[:, None] * m / z
    if hp.get("kl_coef"):
        grad = grad + hp["kl_coef"] * (1 - torch.exp(ref - logp)) * w[:, None] * m / z
    return grad


@pytest.mark.parametrize("name,hparams", CASES)
def test_gradient_matches_closed_form(name, hparams):
    algo = bound(name, **hparams)
    logp, old, ref, mask, gids = random_minibatch()
    adv = algo.advantages(t(MB_REWARDS), gids)
    logp.requires_grad_()
    loss, stats = algo.policy_loss(logp, old, adv, mask, gids, ref_logp=ref)
    loss.backward()
    if name != "wapo":  # the data must exercise the clip, or this test proves little
        assert stats["clipfrac_low"] > 0 and stats["clipfrac_high"] > 0
    expected = closed_form_grad(name, hparams, logp.detach(), old, ref, adv, mask)
    torch.testing.assert_close(logp.grad, expected, rtol=0, atol=1e-12)


def loss_and_grad(algo, logp, old, ref, adv, mask, gids, k, pass_normalizer=True):
    """Sum of the losses (and gradient) of k equal micro-batches of the mini-batch."""
    logp = logp.detach().clone().requires_grad_()
    z = algo.loss_normalizer(adv, mask, gids) if pass_normalizer else None
    total = torch.zeros((), dtype=F64)
    for idx in torch.arange(B).chunk(k):
        loss, _ = algo.policy_loss(
            logp[idx], old[idx], adv[idx], mask[idx], gids[idx], normalizer=z, ref_logp=ref[idx]
        )
        loss.backward()
        total = total + loss.detach()
    return total, logp.grad


@pytest.mark.parametrize("k", [2, 4, 8])
@pytest.mark.parametrize("name,hparams", CASES)
def test_micro_batches_sum_to_the_mini_batch(name, hparams, k):
    algo = bound(name, **hparams)
    logp, old, ref, mask, gids = random_minibatch()
    adv = algo.advantages(t(MB_REWARDS), gids)
    whole_loss, whole_grad = loss_and_grad(algo, logp, old, ref, adv, mask, gids, k=1)
    assert whole_grad.abs().max() > 1e-3  # a non-trivial gradient
    loss, grad = loss_and_grad(algo, logp, old, ref, adv, mask, gids, k=k)
    assert abs(loss - whole_loss).item() <= 1e-6
    assert (grad - whole_grad).abs().max().item() <= 1e-6


@pytest.mark.parametrize("name,hparams", CASES)
def test_without_the_mini_batch_normalizer_micro_batches_disagree(name, hparams):
    # The test above is sensitive: each micro-batch normalising by itself changes the loss.
    algo = bound(name, **hparams)
    logp, old, ref, mask, gids = random_minibatch()
    adv = algo.advantages(t(MB_REWARDS), gids)
    whole_loss, _ = loss_and_grad(algo, logp, old, ref, adv, mask, gids, k=1)
    loss, _ = loss_and_grad(algo, logp, old, ref, adv, mask, gids, k=4, pass_normalizer=False)
    assert abs(loss - whole_loss).item() > 1e-3


# ============================================================================ DAPO sampling, shaping


def test_dapo_dynamic_sampling_keeps_groups_with_spread():
    #   group 10: 1, 1, 1   drop (all correct)      group 11: 0, 0, 0   drop (all wrong)
    #   group 12: 1, 0, 0   keep                    group 13: 0.5       drop (a group of one)
    #   group 14: 0.1 ×3    drop (np.std of it is 1.4e-17 > 0; equality is tested exactly)
    ids = [10, 11, 12, 10, 11, 12, 13, 10, 11, 12, 14, 14, 14]
    rewards = [1, 0, 1, 1, 0, 0, 0.5, 1, 0, 0, 0.1, 0.1, 0.1]
    keep = bound("dapo").filter_groups(t(rewards), torch.tensor(ids))
    assert keep.dtype == torch.bool
    assert keep.tolist() == [0, 0, 1, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0]
    off = bound("dapo", dynamic_sampling=False).filter_groups(t(rewards), torch.tensor(ids))
    assert off.all()


def test_dapo_loop_settings():
    algo = algorithms.get("dapo")
    assert (algo.max_gen_rounds, algo.on_short_batch) == (3, "truncate")
    assert algorithms.get("dapo", on_short_batch="error").on_short_batch == "error"
    assert algorithms.get("grpo").max_gen_rounds == 0  # the base: never regenerate
    with pytest.raises(ValueError, match="on_short_batch"):
        algorithms.get("dapo", on_short_batch="skip")


def test_dapo_overlong_shaping_default_buffer():
    # L = 20, L_buf = 20 // 4 = 5, f = 1: no penalty up to 15 tokens, then -(|o| - 15) / 5.
    #   10 -> 0 (before the buffer), 15 -> 0 (its start), 16 -> -0.2, 18 -> -0.6 (inside),
    #   20 -> -1.0 (at L), 25 -> -1.0 (beyond L: floored at -f; verl's linear form gives -2).
    algo = bound("dapo", L=20)
    lengths = torch.tensor([10, 15, 16, 18, 20, 25])
    shaped = algo.shape_rewards(t([1, 1, 1, 1, 1, 0]), lengths, lengths >= 20)
    torch.testing.assert_close(shaped, t([1.0, 1.0, 0.8, 0.4, 0.0, -1.0]), rtol=0, atol=1e-12)


def test_dapo_overlong_shaping_explicit_buffer_and_factor():
    # L = 20, L_buf = 4, f = 0.5: expected length 16. 16 -> 0, 17 -> -0.125, 20 -> -0.5.
    algo = bound("dapo", L=20, overlong_buffer_len=4, overlong_penalty_factor=0.5)
    lengths = torch.tensor([16, 17, 20])
    shaped = algo.shape_rewards(t([0.0, 0.0, 0.0]), lengths, lengths >= 20)
    torch.testing.assert_close(shaped, t([0.0, -0.125, -0.5]), rtol=0, atol=1e-12)


def test_dapo_overlong_shaping_off_needs_no_bind_and_bad_buffer_is_rejected():
    off = algorithms.get("dapo", overlong_shaping=False)
    assert off.shape_rewards(t([1.0]), torch.tensor([99]), torch.tensor([True])).tolist() == [1.0]
    with pytest.raises(RuntimeError, match="bind"):
        algorithms.get("dapo").shape_rewards(t([1.0]), torch.tensor([9]), torch.tensor([False]))
    with pytest.raises(ValueError, match="overlong_buffer_len"):
        bound("dapo", L=8, overlong_buffer_len=8)


# ============================================================================ registry


ZOO = sorted(BUILTINS + ["cispo", "clip_cov", "gmpo", "gpg", "gspo", "kl_cov", "nsr", "opo", "psr",
                         "reinforce_pp", "rloo", "sapo", "w_reinforce"])  # fmt: skip


def test_available_lists_every_builtin_sorted():
    """Every module of algorithms/ is one registered algorithm (the package imports them all)."""
    names = algorithms.available()
    assert names == sorted(names)
    builtin = [n for n in names if algorithms.get_class(n).__module__.startswith("algorithms.")]
    assert builtin == ZOO


def test_unknown_name_lists_available():
    with pytest.raises(KeyError) as err:
        algorithms.get("ppo_typo")
    assert isinstance(err.value, ValueError)
    assert "ppo_typo" in str(err.value)
    for name in BUILTINS:
        assert name in str(err.value)


def test_unknown_hparam_names_the_valid_ones_with_defaults():
    with pytest.raises(ValueError) as err:
        algorithms.get("dapo", clip_ratio=0.3)
    msg = str(err.value)
    assert "'clip_ratio'" in msg
    assert "clip_ratio_low=0.2" in msg and "clip_ratio_high=0.28" in msg
    assert "overlong_buffer_len=None" in msg


def test_bad_hparam_value_is_rejected():
    with pytest.raises(ValueError, match="clip_ratio"):
        algorithms.get("grpo", clip_ratio=1.5)
    with pytest.raises(ValueError, match="kl_coef"):
        algorithms.get("grpo", kl_coef=-0.1)


def test_hparams_override_defaults_and_round_trip():
    algo = algorithms.get("dapo", clip_ratio_high=0.3, max_gen_rounds=5)
    assert algo.clip_ratio_high == 0.3 and algo.max_gen_rounds == 5
    assert algo.clip_ratio_low == 0.2  # untouched default
    assert algorithms.get("dapo").clip_ratio_high == 0.28  # no shared state
    for name in BUILTINS:
        algo = algorithms.get(name)
        assert algorithms.get(name, **algo.hparams()) == algo
    assert algorithms.get("wapo").hparams() == {"clip_ratio_high": 9.0}
    assert algorithms.get("grpo").hparams() == {"clip_ratio": 0.2, "kl_coef": 0.0, "adv_eps": 1e-6}


def test_duplicate_name_is_rejected():
    class Impostor(algorithms.Algorithm):
        pass

    with pytest.raises(ValueError, match="already registered"):
        algorithms.register("grpo")(Impostor)
    assert algorithms.get_class("grpo").__name__ == "GRPO"


def test_register_a_new_algorithm(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    @algorithms.register("scaled_reinforce")
    class Scaled(algorithms.Algorithm):  # no @dataclass: register adds it
        scale: float = 1.0

        def advantages(self, rewards, group_ids):
            return self.scale * rewards

    assert dataclasses.is_dataclass(Scaled) and Scaled.name == "scaled_reinforce"
    assert algorithms.register("scaled_reinforce")(Scaled) is Scaled  # same class: idempotent
    algo = algorithms.get("scaled_reinforce", scale=2.0)
    assert algo.advantages(t([1.0, -0.5]), torch.tensor([0, 0])).tolist() == [2.0, -1.0]
    # the base loss: token-mean of -r·A; r = 1, A = 2, -1 with 2 and 1 tokens: (-4 + 1) / 3 = -1
    zeros = torch.zeros(2, 2, dtype=F64)
    mask = torch.tensor([[1, 1], [1, 0]])
    loss, _ = algo.policy_loss(zeros, zeros, t([2.0, -1.0]), mask, torch.tensor([0, 0]))
    assert loss.item() == pytest.approx(-1.0)


@pytest.mark.parametrize("name", ["dr_grpo", "wapo"])
def test_unbound_algorithm_that_needs_the_shape_says_bind(name):
    algo = algorithms.get(name)
    with pytest.raises(RuntimeError, match="bind"):
        algo.loss_normalizer(t([1.0]), torch.ones(1, 2), torch.tensor([0]))


def test_bind_validates_and_exposes_the_shape():
    algo = algorithms.get("wapo").bind(group_size=8, max_new_tokens=512, max_prompt_len=256)
    assert (algo.shape.group_size, algo.shape.max_seq_len) == (8, 768)
    with pytest.raises(ValueError, match="group_size"):
        algorithms.get("wapo").bind(group_size=0, max_new_tokens=8, max_prompt_len=8)


def test_shape_mismatch_is_reported():
    algo = bound("dapo")
    with pytest.raises(ValueError, match="adv"):
        algo.policy_loss(
            torch.zeros(2, 3), torch.zeros(2, 3), t([1.0]), torch.ones(2, 3), t([0, 0])
        )


def test_agg_loss_modes_hand_values():
    loss_mat = t([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    agg = algorithms.agg_loss
    # token-mean: (1 + 2 + 4) / 3; seq-mean-token-mean: (3/2 + 4/1) / 2; sum-norm: 7 / 10
    assert agg(loss_mat, mask, "token-mean", 3).item() == pytest.approx(7 / 3)
    assert agg(loss_mat, mask, "seq-mean-token-mean", 2).item() == pytest.approx(2.75)
    assert agg(loss_mat, mask, "seq-mean-token-sum-norm", 10).item() == pytest.approx(0.7)
    with pytest.raises(ValueError, match="token-mean"):
        agg(loss_mat, mask, "seq-sum", 1)


def test_bf16_log_probs_give_a_float32_loss_with_the_same_value():
    # The DAPO example above in bf16: the loss is computed in float32, gradient flows to bf16.
    logp, old, adv, mask, gids = loss_inputs()
    logp16 = logp.detach().to(torch.bfloat16).requires_grad_()
    loss, _ = bound("dapo").policy_loss(logp16, old.to(torch.bfloat16), adv, mask, gids)
    loss.backward()
    assert loss.dtype == torch.float32 and logp16.grad.dtype == torch.bfloat16
    assert loss.item() == pytest.approx(0.204, abs=2e-2)  # bf16 inputs round the ratios
