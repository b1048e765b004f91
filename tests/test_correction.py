"""The rollout/trainer mismatch correction (rlvr/update/correction.py): hand-computed weights and
masks, an exact straight-through gradient scale, and the loop applying it to an algorithm's
update on a synthetic mismatch."""

from __future__ import annotations

import math

import pytest
import torch

import algorithms
from rlvr.config import ConfigError, load_config
from rlvr.models import build_tiny_model
from rlvr.rollout import NativeRolloutEngine
from rlvr.update import Batch, Policy, PolicyUpdate
from rlvr.update.correction import mismatch_correction, scale_gradient

L = math.log


def test_weights_truncation_and_sequence_mask_by_hand():
    # row 0: ratios π_old/π_rollout = 2, 1, 3 (and a padded slot); row 1: 0.1, 0.2; row 2: empty
    old = torch.tensor([[L(0.5), L(0.2), L(0.9), 0.0], [L(0.01), L(0.02), 0.0, 0.0], [0.0] * 4])
    rollout = torch.tensor([[L(0.25), L(0.2), L(0.3), 5.0], [L(0.1), L(0.1), 0.0, 0.0], [0.0] * 4])
    mask = torch.tensor([[1.0, 1, 1, 0], [1, 1, 0, 0], [0, 0, 0, 0]])
    fix = mismatch_correction(old, rollout, mask, tis_cap=2.0, seq_band=(0.5, 2.0))
    expected = torch.tensor([[2.0, 1, 2, 1], [0.1, 0.2, 1, 1], [1, 1, 1, 1]])
    torch.testing.assert_close(fix.weights, expected, rtol=1e-6, atol=1e-6)
    # geometric means: row 0 (2·1·3)^(1/3) = 1.817 kept; row 1 (0.1·0.2)^(1/2) = 0.141 masked;
    # row 2 has no token: kept (it trains nothing either way)
    assert fix.keep.tolist() == [True, False, True]
    assert fix.stats["correction/seq_masked_frac"] == pytest.approx(1 / 3)
    # 5 tokens: weights 2 + 1 + 2 + 0.1 + 0.2; one ratio (3) above the cap
    assert fix.stats["correction/tis_weight_mean"] == pytest.approx(5.3 / 5, rel=1e-6)
    assert fix.stats["correction/tis_truncated_frac"] == pytest.approx(1 / 5)
    log_abs = (L(2) + 0 + L(3) + L(10) + L(5)) / 5
    assert fix.stats["correction/log_ratio_abs_mean"] == pytest.approx(log_abs, rel=1e-6)


def test_off_means_no_weights_and_every_row_kept():
    old, rollout = torch.randn(3, 4), torch.randn(3, 4)
    fix = mismatch_correction(old, rollout, torch.ones(3, 4), tis_cap=None, seq_band=None)
    assert fix.weights is None and fix.keep.all()
    assert set(fix.stats) == {"correction/log_ratio_abs_mean"}


def test_scale_gradient_keeps_the_value_exactly_and_scales_the_gradient():
    x = torch.randn(4, 5, requires_grad=True)
    w = torch.rand(4, 5) * 3
    y = scale_gradient(x, w)
    assert torch.equal(y, x.detach())
    (y * torch.arange(20.0).view(4, 5)).sum().backward()
    torch.testing.assert_close(x.grad, w * torch.arange(20.0).view(4, 5))


def test_a_bad_band_is_a_one_line_config_error():
    with pytest.raises(ConfigError, match="seq_band"):
        load_config(None, ["correction.seq_band=[1.5, 2.0]"])


PROMPTS = [f"Q: {a}+{b}=" for a, b in ((1, 2), (13, 5), (40, 41), (7, 77))]
# group 2 (rows 8-11): row 8 is its only winner
REWARDS = torch.tensor([1.0, 0, 0, 1, 0, 1, 1, 1, 1, 0, 0, 0, 0, 1, 0, 1])


def setup(name: str, overrides, hparams=None):
    cfg = load_config(None, ["rollout.max_new_tokens=10", "train.mini_batches=1", "train.micro_batch_size=4",
                             "train.entropy_delta_every=0", *overrides])  # fmt: skip
    algo = algorithms.get(name, **(hparams or {})).bind(group_size=4, max_new_tokens=10, max_prompt_len=64)
    model, tok = build_tiny_model("qwen2", seed=5)
    policy = Policy(model, cfg)
    roll = NativeRolloutEngine(policy.module, tok, cfg.rollout).generate(PROMPTS, 4, [0, 1, 2, 3])
    return cfg, algo, policy, roll


def one_update(mismatch: torch.Tensor | None, *overrides: str, drop_groups=(), algo_name="grpo") -> dict:
    """The metrics of one update of a tiny Qwen2 on a fixed batch whose engine log-probs are
    shifted by `mismatch` [N] per row (log π_old − log π_rollout, every token)."""
    cfg, algo, policy, roll = setup(algo_name, overrides)
    gids, rewards = torch.arange(len(PROMPTS)).repeat_interleave(4), REWARDS
    keep = ~torch.isin(gids, torch.tensor(list(drop_groups), dtype=torch.long))
    if mismatch is not None:
        roll.sampling_logp = roll.sampling_logp - mismatch[:, None] * roll.completion_mask
    if drop_groups and mismatch is None:  # the reference: a batch without those groups
        from rlvr.rollout.base import select_rows

        roll, gids, rewards = select_rows(roll, keep.nonzero().squeeze(-1)), gids[keep], rewards[keep]
    batch = Batch(roll, gids, rewards)
    lengths = {"lengths": roll.model_lengths} if algo.advantage_lengths else {}
    batch.adv = algo.advantages(rewards, gids, **lengths)
    return PolicyUpdate(policy, algo, cfg)(batch, step=0)


def test_the_loop_scales_every_token_gradient_by_its_truncated_weight():
    plain_run = one_update(None)
    plain = plain_run["actor/grad_norm"]
    # every token's ratio is 3 (within the engines' ~1e-6): weight 3 without a cap, 2 with C = 2
    three = torch.full((16,), L(3.0))
    uncapped = one_update(three, "correction.tis=true", "correction.tis_cap=100")
    capped = one_update(three, "correction.tis=true", "correction.tis_cap=2")
    assert uncapped["actor/grad_norm"] == pytest.approx(3 * plain, rel=1e-4)
    assert capped["actor/grad_norm"] == pytest.approx(2 * plain, rel=1e-4)
    assert capped["correction/tis_weight_mean"] == pytest.approx(2.0, rel=1e-5)
    assert capped["correction/tis_truncated_frac"] == pytest.approx(1.0)
    # the loss value the algorithm computed is unchanged: only its gradient is weighted
    assert capped["actor/loss"] == pytest.approx(plain_run["actor/loss"], abs=1e-6)


def hf_logp(model, r) -> torch.Tensor:
    """log π of every completion token [N, T] by a plain transformers forward of the whole padded
    batch (not the loop's scoring: no micro-batches, no cut padding, no native forward)."""
    ids = torch.cat([r.prompt_ids, r.completion_ids], 1)
    attn = torch.cat([r.prompt_mask, r.completion_mask.long()], 1)
    T = r.completion_ids.shape[1]
    logits = model(input_ids=ids, attention_mask=attn, position_ids=(attn.cumsum(-1) - 1).clamp(min=0)).logits
    return torch.log_softmax(logits[:, -T - 1 : -1].float(), -1).gather(-1, r.completion_ids[..., None]).squeeze(-1)


# WAPO's cap at ratio 10 is never reached here: at 1.2 it clips
@pytest.mark.parametrize("name,hparams", [("grpo", {}), ("dapo", {}), ("wapo", {"clip_ratio_high": 0.2}), ("cispo", {})])
def test_each_token_gradient_is_scaled_by_its_own_weight_where_the_clip_acts(name, hparams):
    """TIS with a different weight on every token (0.1 to the cap 2) and 2 epochs at a high lr, so
    the second epoch's ratios π/π_old are far from 1 and the clip acts: each optimizer step's
    gradient, as the loop accumulated it over 4 micro-batches, equals ∂/∂θ Σ w·(∂loss/∂log π)·log π
    over the whole batch (a weight on the wrong token, row or epoch would not)."""
    cfg, algo, policy, roll = setup(name, ["train.epochs=2", "train.lr=1e-2", "correction.tis=true",
                                           "correction.tis_cap=2"], hparams)  # fmt: skip
    gids = torch.arange(len(PROMPTS)).repeat_interleave(4)
    shift = 0.8 * torch.randn(roll.sampling_logp.shape, generator=torch.Generator().manual_seed(3))
    roll.sampling_logp = roll.sampling_logp - shift * roll.completion_mask
    batch = Batch(roll, gids, REWARDS)
    batch.adv = algo.advantages(REWARDS, gids)
    steps, step = [], policy.step  # (the weights, the gradient) at each optimizer step

    def recording_step():
        steps.append(({k: v.detach().clone() for k, v in policy.module.state_dict().items()},
                      {k: p.grad.detach().clone() for k, p in policy.module.named_parameters()}))  # fmt: skip
        return step()

    policy.step = recording_step
    metrics = PolicyUpdate(policy, algo, cfg)(batch, step=0)
    assert len(steps) == 2 and metrics["actor/skipped_updates"] == 0
    mask = roll.completion_mask
    model = build_tiny_model("qwen2", seed=5)[0]
    model.load_state_dict(steps[0][0])
    with torch.no_grad():
        old = hf_logp(model, roll)
    weights = torch.where(mask > 0, (old - roll.sampling_logp).exp().clamp(max=2.0), torch.ones_like(old))
    assert weights[mask > 0].min() < 0.2 and (weights[mask > 0] == 2.0).float().mean() > 0.1
    clipped = []
    for state, grads in steps:
        model.load_state_dict(state)
        model.zero_grad()
        logp = hf_logp(model, roll)
        at = logp.detach().requires_grad_()
        z = algo.loss_normalizer(batch.adv, mask, gids)
        loss, stats = algo.policy_loss(at, old, batch.adv, mask, gids, normalizer=z)
        (per_token,) = torch.autograd.grad(loss, at)
        ((weights * per_token).detach() * logp).sum().backward()
        for k, p in model.named_parameters():  # measured: within 1e-6 of the gradient's norm
            torch.testing.assert_close(grads[k], p.grad, rtol=1e-4, atol=1e-6, msg=f"{name}: {k}")
        clipped.append(float(stats["clipfrac_low"] + stats["clipfrac_high"]))
    assert clipped[0] == 0 and clipped[1] > 0.1, clipped  # ratio 1, then far from it


# the normaliser families: sequences with a token (grpo, gspo, gmpo, sapo), B·L (dr_grpo), tokens
# (dapo), groups with a winner (wapo), the trained rows' tokens (psr). Not reinforce_pp or gpg:
# their advantages are the batch's (whitening, α = B / B_valid), computed before the update
@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "dapo", "wapo", "gspo", "gmpo", "sapo", "psr"])
def test_the_loop_drops_completions_outside_the_band_from_the_update(name):
    # groups 1 and 3 (rows 4-7, 12-15) sampled by an engine 3x more confident than the trainer
    shift = torch.zeros(16)
    shift[4:8] = shift[12:16] = L(1 / 3)
    masked = one_update(shift, "correction.seq_mask=true", "correction.seq_band=[0.5,2.0]", algo_name=name)
    assert masked["correction/seq_masked_frac"] == pytest.approx(0.5)
    # the same update as on a batch that never held those groups (they leave the normaliser too)
    alone = one_update(None, drop_groups=(1, 3), algo_name=name)
    assert masked["actor/grad_norm"] == pytest.approx(alone["actor/grad_norm"], rel=1e-5)
    assert masked["actor/loss"] == pytest.approx(alone["actor/loss"], rel=1e-5, abs=1e-7)


def test_a_winner_the_sequence_mask_drops_leaves_wapos_group_count():
    """Row 8 is group 2's only winner (A > 0; its losers train nothing under WAPO): dropped by the
    sequence mask, group 2 leaves n_pos, so the update is the one without group 2 (n_pos 3, not 4)."""
    shift = torch.zeros(16)
    shift[8] = L(1 / 3)
    masked = one_update(shift, "correction.seq_mask=true", algo_name="wapo")
    assert masked["correction/seq_masked_frac"] == pytest.approx(1 / 16)
    alone = one_update(None, drop_groups=(2,), algo_name="wapo")
    assert masked["actor/grad_norm"] == pytest.approx(alone["actor/grad_norm"], rel=1e-5)
    assert masked["actor/loss"] == pytest.approx(alone["actor/loss"], rel=1e-5)
