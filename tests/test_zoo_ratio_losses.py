"""GSPO, CISPO, GMPO and SAPO: hand-computed values, edge cases, micro-batches, verl cross-checks.

Expected values are literals worked out by hand (the arithmetic is in the comments), never by
calling the code under test. σ(x) = 1 / (1 + e^-x); k3(z) = e^z - 1 - z. The verl cross-checks
(verl 0.9.1 `core_algos`) are the only tests that need verl; they skip without it.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import algorithms

F64 = torch.float64
ZOO = ["cispo", "gmpo", "gspo", "sapo"]


def bound(name: str, *, G: int = 4, L: int = 6, P: int = 5, **hparams) -> algorithms.Algorithm:
    return algorithms.get(name, **hparams).bind(group_size=G, max_new_tokens=L, max_prompt_len=P)


def t(x, dtype=F64) -> torch.Tensor:
    return torch.tensor(x, dtype=dtype)


def run(algo, logp, old, adv, mask, gids=None, **kw):
    """Loss, stats and dloss/dlogp of one policy_loss call."""
    logp = logp.detach().clone().requires_grad_()
    gids = torch.zeros(len(adv)) if gids is None else gids
    loss, stats = algo.policy_loss(logp, old, adv, mask, gids, **kw)
    loss.backward()
    return loss, stats, logp.grad


def from_log_ratios(log_ratios, old):
    """logp = old + log r, so that logp - old_logp is the given log-ratio."""
    return t(old) + t(log_ratios), t(old)


# ============================================================================ registry, hparams


def test_defaults_are_the_papers():
    assert algorithms.get("gspo").hparams() == {
        "clip_ratio_low": 3e-4,  # GSPO paper: left / right clipping ranges 3e-4, 4e-4
        "clip_ratio_high": 4e-4,
        "adv_eps": 1e-6,
    }
    assert algorithms.get("cispo").hparams() == {
        "clip_ratio_low": None,  # MiniMax-M1: no lower bound on the IS weight
        "clip_ratio_high": 0.2,  # undisclosed in the paper; verl's CISPO example
        "adv_eps": 1e-6,
    }
    assert algorithms.get("gmpo").hparams() == {
        "clip_ratio_low": 0.4,  # GMPO paper: (e^-0.4, e^0.4), log space
        "clip_ratio_high": 0.4,
        "adv_eps": 1e-6,
    }
    assert algorithms.get("sapo").hparams() == {"tau_pos": 1.0, "tau_neg": 1.05, "adv_eps": 1e-6}
    for name in ZOO:
        algo = algorithms.get(name)
        assert algorithms.get(name, **algo.hparams()) == algo
        assert not algo.needs_reference


@pytest.mark.parametrize(
    "name,hparams",
    [
        ("gspo", {"clip_ratio_low": 1.0}),
        ("gspo", {"clip_ratio_high": -1e-4}),
        ("cispo", {"clip_ratio_low": -0.1}),
        ("cispo", {"clip_ratio_high": -0.2}),
        ("gmpo", {"clip_ratio_low": -0.4}),
        ("gmpo", {"clip_ratio_high": float("nan")}),
        ("sapo", {"tau_pos": 0.0}),
        ("sapo", {"tau_neg": -1.0}),
        ("sapo", {"adv_eps": -1.0}),
    ],
)
def test_bad_hparam_value_is_rejected(name, hparams):
    with pytest.raises(ValueError, match=next(iter(hparams))):
        algorithms.get(name, **hparams)


@pytest.mark.parametrize("name", ZOO)
def test_group_relative_so_group_size_one_is_rejected(name):
    with pytest.raises(ValueError, match="group_size"):
        algorithms.get(name).bind(group_size=1, max_new_tokens=8, max_prompt_len=8)


# ============================================================================ advantages
# As tests/test_algorithms.py: completions 0..7, groups interleaved and of unequal size:
#   group 5 -> positions 0, 2, 4, 6 with rewards 1, 0, 0, 1
#   group 2 -> positions 1, 3, 5    with rewards 3, 3, 3   (all equal)
#   group 9 -> position 7           with reward  0.7       (a group of one)
REWARDS = [1.0, 3.0, 0.0, 3.0, 0.0, 3.0, 1.0, 0.7]
GROUPS = [5, 2, 5, 2, 5, 2, 5, 9]
# group 5: mean 0.5; unbiased var = 4 · 0.25 / 3 = 1/3; std = 0.5773502691896258;
# A = ±0.5 / (0.5773502691896258 + 1e-6) = ±0.8660239037870368
A_STD = 0.8660239037870368


@pytest.mark.parametrize("name", ZOO)
def test_grpo_advantage_hand_values(name):
    adv = bound(name).advantages(t(REWARDS), torch.tensor(GROUPS))
    expected = [A_STD, 0.0, -A_STD, 0.0, -A_STD, 0.0, A_STD, 0.0]
    torch.testing.assert_close(adv, t(expected), rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", ZOO)
def test_group_of_one_and_all_equal_group_give_zero_not_nan(name):
    algo = bound(name)
    assert algo.advantages(t([0.7]), torch.tensor([3])).tolist() == [0.0]
    assert algo.advantages(t([2.0, 2.0, 2.0]), torch.tensor([1, 1, 1])).tolist() == [0.0] * 3
    # A = 0 everywhere: the loss is 0 (SAPO, GMPO: -f·0 = -ρ·0 = 0), so is the gradient.
    logp, old = from_log_ratios([[0.5, -0.5], [2.0, -3.0], [0.1, 0.0]], [[-1.0] * 2] * 3)
    adv = algo.advantages(t([2.0, 2.0, 0.7]), torch.tensor([1, 1, 3]))
    loss, stats, grad = run(algo, logp, old, adv, torch.ones(3, 2, dtype=torch.bool))
    assert loss.item() == 0.0 and torch.equal(grad, torch.zeros_like(grad))
    if name != "cispo":  # CISPO counts truncated IS weights whatever A (verl's pg_clipfrac)
        assert stats["clipfrac_low"].item() == 0.0 and stats["clipfrac_high"].item() == 0.0
    assert all(torch.isfinite(v).all() for v in stats.values())


# ============================================================================ GSPO by hand


def test_gspo_hand_values():
    # ε_low = 3e-4, ε_high = 4e-4: s_i must stay in [0.9997, 1.0004].
    # row 0, A = +1:  log r = 0.3, -0.1, 0.1        mean 0.3/3 = 0.1; s = e^0.1 = 1.1051709180756477
    #                 > 1.0004 with A > 0: clipped high, ℓ = -1.0004 per token, gradient 0.
    # row 1, A = -2:  log r = 0.0003, -0.0001, (5.0 padding)   mean 0.0002/2 = 0.0001;
    #                 s = e^0.0001 = 1.0001000050001667, inside: ℓ = 2·s = 2.0002000100003334.
    # row 2, A = -1:  log r = -0.002, -0.004, (0.7 padding)    mean -0.003; s = e^-0.003
    #                 = 0.997004495503373 < 0.9997 with A < 0: clipped low, ℓ = max(s, 0.9997)
    #                 = 0.9997, gradient 0.
    # N = 3: loss = (-1.0004 + 2.0002000100003334 + 0.9997) / 3 = 1.9995000100003334 / 3
    #             = 0.6665000033334445.
    old = [[-1.0, -2.0, -0.5], [-1.5, -0.3, -2.5], [-0.7, -1.2, -0.9]]
    logp, old = from_log_ratios(
        [[0.3, -0.1, 0.1], [0.0003, -0.0001, 5.0], [-0.002, -0.004, 0.7]], old
    )
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 1, 0]], dtype=torch.bool)
    loss, stats, grad = run(bound("gspo"), logp, old, t([1.0, -2.0, -1.0]), mask)
    assert loss.item() == pytest.approx(0.6665000033334445, abs=1e-12)
    # Every token of row 1 gets the same gradient, although its two tokens' ratios differ:
    # -A·s / (|o|·N) = 2 · 1.0001000050001667 / (2 · 3) = 0.3333666683333889.
    g = 0.3333666683333889
    torch.testing.assert_close(grad, t([[0, 0, 0], [g, g, 0], [0, 0, 0]]), rtol=0, atol=1e-12)
    assert stats["clipfrac_high"].item() == pytest.approx(3 / 7)  # all of row 0's tokens
    assert stats["clipfrac_low"].item() == pytest.approx(2 / 7)  # all of row 2's tokens
    assert stats["tokens"].item() == 7
    # approx_kl stays token-level: mean of k3 over the 7 mask tokens:
    #   k3(0.3) = 0.049858807576003084, k3(-0.1) = 0.004837418035959579,
    #   k3(0.1) = 0.005170918075647624, k3(0.0003) = 4.500450033749796e-08,
    #   k3(-0.0001) = 4.999833337496554e-09, k3(-0.002) = 1.9986673330668614e-06,
    #   k3(-0.004) = 7.989343991472372e-06  -> sum / 7 = 0.008553883100466928
    assert stats["approx_kl"].item() == pytest.approx(0.008553883100466928, abs=1e-12)


def test_gspo_sequence_ratio_is_capped_at_e10_like_verl():
    # One completion, A = -1, log r = 15, 15 -> log s = 15, clamped to 10 (verl's max=10):
    # ℓ = max(-A·e^10, -A·0.9997) = e^10 = 22026.465794806718; past the clamp the gradient is 0.
    logp, old = from_log_ratios([[15.0, 15.0]], [[-20.0, -20.0]])
    loss, _, grad = run(bound("gspo"), logp, old, t([-1.0]), torch.ones(1, 2))
    assert loss.item() == pytest.approx(22026.465794806718, rel=1e-12)
    assert torch.equal(grad, torch.zeros_like(grad))


def gspo_sequence_form(logp, old, adv, mask, eps_low=3e-4, eps_high=4e-4):
    """The paper's sequence objective written directly: -(1/N) Σ_i min(s_i A_i, clip(s_i) A_i)."""
    m = mask.to(F64)
    n = m.sum(-1)
    s = torch.exp(((logp - old) * m).sum(-1) / n.clamp(min=1))
    per_seq = torch.maximum(-adv * s, -adv * s.clamp(1 - eps_low, 1 + eps_high))
    return (per_seq * (n > 0)).sum() / (n > 0).sum(), s


def test_gspo_token_form_has_the_sequence_forms_value_and_gradient():
    g = torch.Generator().manual_seed(3)
    B, T = 12, 7
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    lengths[4] = 0  # an empty completion
    mask = torch.arange(T)[None, :] < lengths[:, None]
    old = -torch.rand(B, T, generator=g, dtype=F64) * 3
    logp = old + 8e-4 * torch.randn(B, T, generator=g, dtype=F64)
    adv = t([1.0, -1.0, 0.5, -0.5] * 3)
    loss, stats, grad = run(bound("gspo"), logp, old, adv, mask)
    lp = logp.clone().requires_grad_()
    seq_loss, s = gspo_sequence_form(lp, old, adv, mask)
    seq_loss.backward()
    # The data has both clipped and unclipped sequences, or the comparison proves little.
    clipped = ((adv > 0) & (s > 1.0004)) | ((adv < 0) & (s < 0.9997))
    live = (lengths > 0) & ~clipped
    assert clipped.any() and live.sum() >= 3
    assert stats["clipfrac_low"] > 0 and stats["clipfrac_high"] > 0
    torch.testing.assert_close(loss, seq_loss.detach(), rtol=0, atol=1e-12)
    torch.testing.assert_close(grad, lp.grad, rtol=0, atol=1e-12)
    # Closed form: -A_i s_i / (|o_i| N) on every token of an unclipped sequence, 0 elsewhere.
    n_seq = (lengths > 0).sum()
    per_tok = -adv * s.detach() / (lengths.clamp(min=1) * n_seq) * live
    torch.testing.assert_close(grad, per_tok[:, None] * mask, rtol=0, atol=1e-12)


# ============================================================================ CISPO by hand
# B = 2, T = 3 (the example of tests/test_algorithms.py):
#   row 0 (A = +1): r = 1.0, 3.0, 0.5      old = -1, -2, -0.5    all 3 tokens in the mask
#   row 1 (A = -2): r = 1.1, 0.2, (2.0)    old = -1.5, -0.3, (-2.5)   the third is padding
# log π = old + ln r:
#   row 0: -1, -2 + 1.0986122886681098 = -0.9013877113318902, -0.5 - 0.6931471805599453
#          = -1.1931471805599454
#   row 1: -1.5 + 0.09531017980432493 = -1.404689820195675, -0.3 - 1.6094379124341003
#          = -1.9094379124341003
RATIOS = [[1.0, 3.0, 0.5], [1.1, 0.2, 2.0]]
OLD = [[-1.0, -2.0, -0.5], [-1.5, -0.3, -2.5]]
ADV = [1.0, -2.0]
MASK = [[1, 1, 1], [1, 1, 0]]


def ratio_inputs():
    old = t(OLD)
    return old + torch.log(t(RATIOS)), old, t(ADV), torch.tensor(MASK, dtype=torch.bool)


def test_cispo_paper_default_hand_values():
    # Defaults: no lower bound, weight capped at 1.2: w = 1, 1.2 (r = 3 capped), 0.5; 1.1, 0.2.
    # ℓ = -w·A·log π:
    #   row 0: -1·1·(-1) = 1;  -1.2·(-0.9013877113318902) = 1.0816652535982683;
    #          -0.5·(-1.1931471805599454) = 0.5965735902799727
    #   row 1: -1.1·(-2)·(-1.404689820195675) = -3.0903176044304854;
    #          -0.2·(-2)·(-1.9094379124341003) = -0.7637751649736402
    # token-mean: sum -1.1758539255258846 / 5 = -0.23517078510517692
    loss, stats, grad = run(bound("cispo"), *ratio_inputs())
    assert loss.item() == pytest.approx(-0.23517078510517692, abs=1e-12)
    # dℓ/dlog π = -w·A / 5 — nothing is dropped, the r = 3 token keeps -1.2/5 = -0.24:
    #   row 0: -0.2, -0.24, -0.1;  row 1: 2.2/5 = 0.44, 0.4/5 = 0.08, 0 (padding).
    torch.testing.assert_close(grad, t([[-0.2, -0.24, -0.1], [0.44, 0.08, 0]]), rtol=0, atol=1e-12)
    assert stats["clipfrac_high"].item() == pytest.approx(1 / 5)  # r = 3 > 1.2
    assert stats["clipfrac_low"].item() == 0.0  # no lower bound: r = 0.2 and 0.5 untouched
    assert stats["tokens"].item() == 5


def test_cispo_verl_two_sided_clip_hand_values():
    # clip_ratio_low = 0.2: w = clip(r, 0.8, 1.2) whatever the sign of A:
    #   row 0: 1, 1.2, 0.8;  row 1: 1.1, 0.8.
    # ℓ: row 0: 1, 1.0816652535982683, -0.8·(-1.1931471805599454) = 0.9545177444479563;
    #    row 1: -3.0903176044304854, -0.8·(-2)·(-1.9094379124341003) = -3.0551006598945607
    # token-mean: -3.1092352662788216 / 5 = -0.6218470532557643
    loss, stats, grad = run(bound("cispo", clip_ratio_low=0.2), *ratio_inputs())
    assert loss.item() == pytest.approx(-0.6218470532557643, abs=1e-12)
    # -w·A/5: row 0: -0.2, -0.24, -0.16; row 1: 0.44, 1.6/5 = 0.32, 0.
    torch.testing.assert_close(grad, t([[-0.2, -0.24, -0.16], [0.44, 0.32, 0]]), rtol=0, atol=1e-12)
    assert stats["clipfrac_low"].item() == pytest.approx(2 / 5)  # r = 0.5 and r = 0.2
    assert stats["clipfrac_high"].item() == pytest.approx(1 / 5)


@pytest.mark.parametrize("hparams", [{"clip_ratio_high": 4.0}, {"clip_ratio_high": None}])
def test_cispo_trl_absolute_cap_and_no_cap(hparams):
    # TRL's cap at 5.0 = clip_ratio_high 4.0; with r <= 3 here it never binds, nor does None:
    # the r = 3 token's gradient is -3·1/5 = -0.6, and nothing is counted as truncated.
    _, stats, grad = run(bound("cispo", **hparams), *ratio_inputs())
    assert grad[0, 1].item() == pytest.approx(-0.6, abs=1e-12)
    assert stats["clipfrac_high"].item() == 0.0 and stats["clipfrac_low"].item() == 0.0


def test_cispo_lower_bound_of_one_or_more_equals_none():
    # 1 - ε_low <= 0 < r: verl's clip_ratio_low = 10 is the paper's "no lower bound".
    base = run(bound("cispo"), *ratio_inputs())
    for low in (1.0, 10.0):
        loss, _, grad = run(bound("cispo", clip_ratio_low=low), *ratio_inputs())
        assert loss.item() == base[0].item() and torch.equal(grad, base[2])


# ============================================================================ GMPO by hand


def test_gmpo_hand_values():
    # ε = 0.4 in log space.
    # row 0, A = +1: log r = 0.1, 0.6, -0.5 -> A > 0 clips above only: 0.1, 0.4, -0.5
    #                (-0.5 stays: the lower side is not the one A > 0 pushes);
    #                mean 0/3 = 0; ρ = 1; loss term -A·ρ = -1.
    # row 1, A = -2: log r = 0.3, -0.7, (5.0 padding) -> A < 0 clips below only: 0.3, -0.4;
    #                mean -0.1/2 = -0.05; ρ = e^-0.05 = 0.951229424500714;
    #                term 2ρ = 1.902458849001428
    # N = 2: loss = (-1 + 1.902458849001428) / 2 = 0.451229424500714
    old = [[-1.0, -2.0, -0.5], [-1.5, -0.3, -2.5]]
    logp, old = from_log_ratios([[0.1, 0.6, -0.5], [0.3, -0.7, 5.0]], old)
    mask = torch.tensor(MASK, dtype=torch.bool)
    loss, stats, grad = run(bound("gmpo"), logp, old, t(ADV), mask)
    assert loss.item() == pytest.approx(0.451229424500714, abs=1e-12)
    # -A·ρ/(|o|·N) on unclipped tokens: row 0: -1/(3·2) = -1/6 (tokens 0 and 2), 0 (clipped);
    # row 1: 2·0.951229424500714/(2·2) = 0.475614712250357, 0 (clipped), 0 (padding).
    expected = t([[-1 / 6, 0, -1 / 6], [0.475614712250357, 0, 0]])
    torch.testing.assert_close(grad, expected, rtol=0, atol=1e-12)
    assert stats["clipfrac_high"].item() == pytest.approx(1 / 5)  # 0.6 with A > 0
    assert stats["clipfrac_low"].item() == pytest.approx(1 / 5)  # -0.7 with A < 0


# ============================================================================ SAPO by hand


def test_sapo_hand_values():
    # f(r) = σ(τ(r - 1))·4/τ; the RATIOS example, τ = 1 for row 0 (A > 0), 1.05 for row 1.
    # row 0: σ(0)·4 = 2; σ(2)·4 = 0.8807970779778823·4 = 3.5231883119115293;
    #        σ(-0.5)·4 = 0.3775406687981454·4 = 1.5101626751925816
    #        ℓ = -f·1; mean over 3: -7.033350987104111/3 = -2.3444503290347036
    # row 1: σ(0.105)·4/1.05 = 0.5262259093720687·3.8095238095238093 = 2.0046701309412143;
    #        σ(-0.84)·4/1.05 = 0.30153478399746125·3.8095238095238093 = 1.1487039390379474
    #        ℓ = -f·(-2); mean over 2: 6.306748139958323/2 = 3.1533740699791615
    # N = 2: loss = (-2.3444503290347036 + 3.1533740699791615)/2 = 0.4044618704722289
    loss, stats, grad = run(bound("sapo"), *ratio_inputs())
    assert loss.item() == pytest.approx(0.4044618704722289, abs=1e-12)
    # dℓ/dlog π = -A·r·w/(|o|·N), w = 4σ(1-σ) at τ(r-1):
    #   row 0: w = 1, 4·0.8808·0.1192 = 0.41997434161402647, 4·0.3775·0.6225 = 0.940014848806378
    #          -> -1/6, -3·0.41997434161402647/6 = -0.20998717080701323,
    #             -0.5·0.940014848806378/6 = -0.07833457073386484
    #   row 1: w = 0.9972488067104321, 0.8424462321482625
    #          -> 2·1.1·0.9972488067104321/4 = 0.5484868436907377,
    #             2·0.2·0.8424462321482625/4 = 0.08424462321482626, 0 (padding)
    expected = t(
        [
            [-1 / 6, -0.20998717080701323, -0.07833457073386484],
            [0.5484868436907377, 0.08424462321482626, 0.0],
        ]
    )
    torch.testing.assert_close(grad, expected, rtol=0, atol=1e-12)
    assert stats["clipfrac_low"].item() == 0.0 and stats["clipfrac_high"].item() == 0.0
    # gate_weight: (1 + 0.41997434161402647 + 0.940014848806378 + 0.9972488067104321
    #               + 0.8424462321482625) / 5 = 0.8399368458558198
    assert stats["gate_weight"].item() == pytest.approx(0.8399368458558198, abs=1e-12)


def test_sapo_on_policy_gradient_is_grpos():
    # r = 1: w = 4·σ(0)·(1 - σ(0)) = 1 for either τ, so dℓ/dlog π = -A/(|o|·N) as GRPO/PPO.
    logp = t([[-1.0, -2.0], [-0.5, -0.7]])
    mask = torch.ones(2, 2)
    _, stats, grad = run(bound("sapo"), logp, logp.clone(), t([1.0, -3.0]), mask)
    # row 0: -1/(2·2) = -0.25; row 1: 3/(2·2) = 0.75
    torch.testing.assert_close(grad, t([[-0.25, -0.25], [0.75, 0.75]]), rtol=0, atol=1e-12)
    assert stats["gate_weight"].item() == 1.0


# ============================================================================ masks and NaN


@pytest.mark.parametrize("name", ZOO)
def test_all_masked_batch_gives_exact_zero_and_no_nan(name):
    algo = bound(name, G=2)
    gids = torch.tensor([0, 0, 1])
    adv = algo.advantages(t([1.0, 0.0, 1.0]), gids)
    logp = torch.randn(3, 4, dtype=F64, generator=torch.Generator().manual_seed(0))
    old = torch.full((3, 4), -math.inf, dtype=F64)  # padding may hold anything
    loss, stats, grad = run(algo, logp, old, adv, torch.zeros(3, 4, dtype=torch.bool), gids)
    assert loss.item() == 0.0
    assert torch.equal(grad, torch.zeros_like(grad))
    assert stats["tokens"].item() == 0
    assert all(torch.isfinite(torch.as_tensor(v)).all() for v in stats.values())


@pytest.mark.parametrize("name", ZOO)
def test_garbage_in_padding_changes_nothing(name):
    # -inf / NaN log-probs in padding (CISPO multiplies log π itself): same loss and gradient.
    algo = bound(name)
    logp, old, adv, mask = ratio_inputs()
    clean = run(algo, logp, old, adv, mask)
    dirty_logp, dirty_old = logp.clone(), old.clone()
    dirty_logp[1, 2], dirty_old[1, 2] = math.nan, -math.inf
    loss, stats, grad = run(algo, dirty_logp, dirty_old, adv, mask)
    assert loss.item() == clean[0].item()
    assert torch.equal(grad, clean[2])
    assert all(torch.isfinite(v).all() for v in stats.values())


@pytest.mark.parametrize("name", ZOO)
def test_bf16_log_probs_give_a_float32_loss(name):
    logp, old, adv, mask = ratio_inputs()
    logp16 = logp.to(torch.bfloat16).requires_grad_()
    loss, _ = bound(name).policy_loss(logp16, old.to(torch.bfloat16), adv, mask, torch.zeros(2))
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert logp16.grad.dtype == torch.bfloat16 and torch.isfinite(logp16.grad).all()


# ============================================================================ micro-batches
B, T = 8, 6
MB_GROUPS = [3, 8, 3, 8, 3, 8, 3, 8]  # two groups of 4, interleaved
MB_REWARDS = [1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 0.0]  # group 3: 1,1,0,1  group 8: 0,1,0,0
CASES = [
    ("gspo", {}),
    ("cispo", {}),
    ("cispo", {"clip_ratio_low": 0.2}),
    ("gmpo", {}),
    ("sapo", {}),
]


def random_minibatch(seed: int = 0, noise: float = 0.5):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    lengths[5] = 0  # one empty completion
    mask = torch.arange(T)[None, :] < lengths[:, None]
    old = -torch.rand(B, T, generator=g, dtype=F64) * 3
    logp = old + noise * torch.randn(B, T, generator=g, dtype=F64)
    return logp, old, mask, torch.tensor(MB_GROUPS)


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
@pytest.mark.parametrize("name,hparams", CASES)
def test_micro_batches_sum_to_the_mini_batch(name, hparams, k):
    algo = bound(name, **hparams)
    logp, old, mask, gids = random_minibatch()
    adv = algo.advantages(t(MB_REWARDS), gids)
    whole_loss, whole_grad = loss_and_grad(algo, logp, old, adv, mask, gids, k=1)
    assert whole_grad.abs().max() > 1e-3  # a non-trivial gradient
    loss, grad = loss_and_grad(algo, logp, old, adv, mask, gids, k=k)
    assert abs(loss - whole_loss).item() <= 1e-10
    assert (grad - whole_grad).abs().max().item() <= 1e-10


@pytest.mark.parametrize("name,hparams", CASES)
def test_without_the_mini_batch_normalizer_micro_batches_disagree(name, hparams):
    # The test above is sensitive: each micro-batch normalising by itself changes the loss.
    algo = bound(name, **hparams)
    logp, old, mask, gids = random_minibatch()
    adv = algo.advantages(t(MB_REWARDS), gids)
    whole_loss, _ = loss_and_grad(algo, logp, old, adv, mask, gids, k=1)
    loss, _ = loss_and_grad(algo, logp, old, adv, mask, gids, k=4, pass_normalizer=False)
    assert abs(loss - whole_loss).item() > 1e-3


# ============================================================================ verl cross-checks


@pytest.fixture(scope="module")
def verl():
    core_algos = pytest.importorskip("verl.trainer.ppo.core_algos")
    config = pytest.importorskip("verl.workers.config")
    return core_algos, config.ActorConfig


def verl_config(ActorConfig, **kw):
    """The smallest ActorConfig verl's policy losses accept (global_batch_info empty: verl
    normalises over the batch it is given, i.e. our whole mini-batch)."""
    return ActorConfig(strategy="fsdp", rollout_n=4, ppo_micro_batch_size_per_gpu=1, **kw)


def cross_batch(seed: int, noise: float, empty_row: bool):
    """Random float64 [B, T] inputs, finite everywhere (verl does not mask before exp)."""
    g = torch.Generator().manual_seed(seed)
    b, T_ = 16, 9
    lengths = torch.randint(1, T_ + 1, (b,), generator=g)
    if empty_row:
        lengths[3] = 0
    mask = torch.arange(T_)[None, :] < lengths[:, None]
    old = -torch.rand(b, T_, generator=g, dtype=F64) * 3
    logp = old + noise * torch.randn(b, T_, generator=g, dtype=F64)
    gids = torch.arange(b) // 4
    rewards = torch.randint(0, 2, (b,), generator=g).to(F64)
    rewards[:4] = t([1.0, 0.0, 0.0, 1.0])  # at least one group with spread
    return logp, old, mask, gids, rewards


def ours_vs_verl(verl, name, verl_fn, agg, cfg_kw, hparams, noise, empty_row, seed=0):
    core_algos, ActorConfig = verl
    algo = bound(name, G=4, **hparams)
    logp, old, mask, gids, rewards = cross_batch(seed, noise, empty_row)
    adv = algo.advantages(rewards, gids)
    ours = run(algo, logp, old, adv, mask, gids)
    lp = logp.clone().requires_grad_()
    loss, metrics = getattr(core_algos, verl_fn)(
        old_log_prob=old,
        log_prob=lp,
        advantages=adv[:, None] * mask,  # verl's outcome estimators give A·mask
        response_mask=mask.to(F64),
        loss_agg_mode=agg,
        config=verl_config(ActorConfig, **cfg_kw),
    )
    loss.backward()
    return ours, (loss.detach(), metrics, lp.grad), mask


def assert_same(ours, theirs, scale=1.0):
    (loss, _, grad), (v_loss, _, v_grad) = ours, theirs
    assert abs(loss.item() * scale - v_loss.item()) <= 1e-5
    assert (grad * scale - v_grad).abs().max().item() <= 1e-5
    assert grad.abs().max() > 1e-3  # a non-trivial gradient was compared


def test_grpo_advantage_matches_verl_for_groups_of_two_or_more(verl):
    core_algos, _ = verl
    _, _, mask, gids, rewards = cross_batch(0, 0.5, empty_row=False)
    scores = torch.zeros(mask.shape, dtype=F64)
    scores[:, 0] = rewards  # token-level rewards: one outcome reward per completion
    v_adv, _ = core_algos.compute_grpo_outcome_advantage(
        scores, torch.ones_like(scores), np.array(gids.tolist()), epsilon=1e-6
    )
    for name in ZOO:
        adv = bound(name).advantages(rewards, gids)
        torch.testing.assert_close(adv, v_adv[:, 0], rtol=0, atol=1e-6)


@pytest.mark.parametrize("empty_row", [False, True])
def test_gspo_matches_verl(verl, empty_row):
    # noise 8e-4: sequence log-ratios straddle the [ln 0.9997, ln 1.0004] range.
    cfg = {"clip_ratio_low": 3e-4, "clip_ratio_high": 4e-4}
    ours, theirs, _ = ours_vs_verl(
        verl, "gspo", "compute_policy_loss_gspo", "seq-mean-token-mean", cfg, {}, 8e-4, empty_row
    )
    assert_same(ours, theirs)
    stats, metrics = ours[1], theirs[1]
    assert 0 < stats["clipfrac_low"] + stats["clipfrac_high"] < 1  # some clipped, some not
    assert (stats["clipfrac_low"] + stats["clipfrac_high"]).item() == pytest.approx(
        metrics["actor/pg_clipfrac"], abs=1e-9
    )


@pytest.mark.parametrize(
    "hparams,cfg",
    [
        ({}, {"clip_ratio_low": 10.0, "clip_ratio_high": 0.2}),  # our default = verl's example
        ({"clip_ratio_low": 0.2}, {"clip_ratio_low": 0.2, "clip_ratio_high": 0.2}),  # two-sided
    ],
)
def test_cispo_matches_verl(verl, hparams, cfg):
    ours, theirs, _ = ours_vs_verl(
        verl, "cispo", "compute_policy_loss_cispo", "token-mean", cfg, hparams, 0.5, True
    )
    assert_same(ours, theirs)
    stats, metrics = ours[1], theirs[1]
    assert stats["clipfrac_high"] > 0
    assert (stats["clipfrac_low"] > 0) == ("clip_ratio_low" in hparams)  # the lower clip binds
    assert (stats["clipfrac_low"] + stats["clipfrac_high"]).item() == pytest.approx(
        metrics["actor/pg_clipfrac"], abs=1e-9
    )


@pytest.mark.parametrize("empty_row", [False, True])
def test_gmpo_matches_verl(verl, empty_row):
    cfg = {"clip_ratio": 0.4, "clip_ratio_low": 0.4, "clip_ratio_high": 0.4}
    ours, theirs, mask = ours_vs_verl(
        verl, "gmpo", "compute_policy_loss_geo_mean", "token-mean", cfg, {}, 0.5, empty_row
    )
    # The documented difference: verl's torch.mean divides by every row B, ours by the N
    # completions with a token. Equal without an empty row; otherwise verl = ours · N / B.
    n, b = (mask.sum(-1) > 0).sum().item(), mask.shape[0]
    assert (n < b) == empty_row
    assert_same(ours, theirs, scale=n / b)
    stats, metrics = ours[1], theirs[1]
    assert stats["clipfrac_high"] > 0 and stats["clipfrac_low"] > 0
    # verl also counts tokens outside the range on the side the clip leaves alone.
    assert stats["clipfrac_high"].item() <= metrics["actor/pg_clipfrac"] + 1e-12
    assert stats["clipfrac_low"].item() <= metrics["actor/pg_clipfrac_lower"] + 1e-12


@pytest.mark.parametrize("empty_row", [False, True])
def test_sapo_matches_verl(verl, empty_row):
    cfg = {"tau_pos": 1.0, "tau_neg": 1.05}
    ours, theirs, _ = ours_vs_verl(
        verl, "sapo", "compute_policy_loss_sapo", "seq-mean-token-mean", cfg, {}, 0.5, empty_row
    )
    assert_same(ours, theirs)
    assert theirs[1]["actor/pg_clipfrac"] == 0.0 and ours[1]["clipfrac_high"].item() == 0.0
