"""Stability statistics on hand-built distributions: entropy, the token taxonomy, collapse rules."""

import math

import pytest
import torch

from rlvr.config import CollapseConfig
from rlvr.stats import CollapseDetector, group_stats, token_taxonomy


def test_entropy_and_collision_of_a_hand_built_distribution():
    # p = (0.5, 0.25, 0.25): H = 0.5 ln 2 + 2·0.25 ln 4 = 1.5 ln 2 = 1.0397; Σp² = 0.375
    p = torch.tensor([0.5, 0.25, 0.25])
    logp = p.log()
    assert float(-(p * logp).sum()) == pytest.approx(1.5 * math.log(2))
    assert float((p * p).sum()) == pytest.approx(0.375)


def test_token_taxonomy_counts_and_gradient_mass_by_hand():
    # two completions × 3 positions; completion 0 has A=+1, completion 1 has A=-2.
    # Σp² = 0.375 at every position, so p ≥ 0.375 is a peak.
    adv = torch.tensor([1.0, -2.0])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])  # 5 live tokens
    p_token = torch.tensor([[0.5, 0.25, 0.9], [0.25, 0.5, 0.375]])
    collision = torch.full((2, 3), 0.375)
    out = token_taxonomy(adv, mask, p_token, collision)
    # bins: pos_peak {0.5}, pos_valley {0.25}, neg_peak {0.5, 0.375}, neg_valley {0.25}
    assert out["taxonomy/pos_peak_frac"] == pytest.approx(1 / 5)
    assert out["taxonomy/pos_valley_frac"] == pytest.approx(1 / 5)
    assert out["taxonomy/neg_peak_frac"] == pytest.approx(2 / 5)
    assert out["taxonomy/neg_valley_frac"] == pytest.approx(1 / 5)
    # mass |A|(1-p): pos 0.5, 0.75; neg 2·0.75=1.5, 2·0.5=1.0, 2·0.625=1.25 → total 5.0
    assert out["taxonomy/pos_peak_grad_mass"] == pytest.approx(0.5 / 5.0)
    assert out["taxonomy/pos_valley_grad_mass"] == pytest.approx(0.75 / 5.0)
    assert out["taxonomy/neg_peak_grad_mass"] == pytest.approx((1.0 + 1.25) / 5.0)
    assert out["taxonomy/neg_valley_grad_mass"] == pytest.approx(1.5 / 5.0)
    assert out["taxonomy/zero_adv_frac"] == 0.0


def test_zero_advantage_tokens_are_left_out_of_the_bins():
    out = token_taxonomy(
        torch.tensor([0.0, 1.0]), torch.ones(2, 2), torch.full((2, 2), 0.5), torch.full((2, 2), 0.3)
    )
    assert out["taxonomy/pos_peak_frac"] == 1.0 and out["taxonomy/zero_adv_frac"] == 0.5


def test_group_stats_by_hand():
    rewards = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 0.0])
    out = group_stats(rewards, torch.tensor([0, 0, 1, 1, 2, 2]))
    assert out["rollout/reward_mean"] == pytest.approx(0.5)
    assert out["rollout/frac_zero_std_groups"] == pytest.approx(2 / 3)


def feed(detector, series):
    for step, (entropy, reward, nonfinite) in enumerate(series, 1):
        reason = detector.update(entropy, reward, nonfinite)
        if reason:
            return step, reason
    return None


def test_collapse_rules_fire_after_patience():
    cfg = CollapseConfig(window=2, patience=2, entropy_low=0.1, entropy_high=3.0, reward_low=0.2)
    assert feed(CollapseDetector(cfg), [(1.0, 0.5, False)] * 2 + [(3.5, 0.5, False)] * 2)[0] == 4
    assert (
        "explosion"
        in feed(CollapseDetector(cfg), [(1.0, 0.5, False)] * 2 + [(3.5, 0.5, False)] * 2)[1]
    )
    assert (
        "entropy collapse"
        in feed(CollapseDetector(cfg), [(1.0, 0.5, False)] * 2 + [(0.05, 0.5, False)] * 2)[1]
    )
    assert (
        "reward collapse"
        in feed(CollapseDetector(cfg), [(1.0, 0.5, False)] * 2 + [(1.0, 0.05, False)] * 2)[1]
    )
    # one bad step is not enough
    assert (
        feed(
            CollapseDetector(cfg),
            [(1.0, 0.5, False)] * 2 + [(3.5, 0.5, False), (1.0, 0.5, False)] * 3,
        )
        is None
    )
    nonfinite = CollapseConfig(max_nonfinite=3)
    assert feed(CollapseDetector(nonfinite), [(1.0, 0.5, True)] * 3)[0] == 3
    assert "non-finite" in feed(CollapseDetector(cfg), [(float("nan"), 0.5, False)])[1]
