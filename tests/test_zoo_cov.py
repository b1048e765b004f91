"""Clip-Cov and KL-Cov (algorithms/clip_cov.py, kl_cov.py): the token selection is made over the
whole mini-batch by loss_normalizer, from the log-probs the loop passes, so micro-batches give
the mini-batch's loss and gradient; against verl 0.9.1 on one micro-batch with the same seed."""

import pytest
import torch

import algorithms
from algorithms.clip_cov import token_covariance

F64 = torch.float64


def batch(seed: int = 0, B: int = 16, T: int = 8):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    mask = torch.arange(T)[None, :] < lengths[:, None]
    old = -torch.rand(B, T, generator=g, dtype=F64) * 4
    logp = old + 0.3 * torch.randn(B, T, generator=g, dtype=F64)
    gids = torch.arange(B) // 4
    rewards = torch.randint(0, 2, (B,), generator=g).to(F64)
    rewards[:4] = torch.tensor([1.0, 0.0, 0.0, 1.0], dtype=F64)
    return logp, old, mask, gids, rewards


def get(name, **hp):
    return algorithms.get(name, **hp).bind(group_size=4, max_new_tokens=8, max_prompt_len=4)


def test_token_covariance_hand_values():
    # A = [1, -1]; tokens: row 0 logp [-1, -3], row 1 logp [-2] (its 2nd token masked)
    # mean A over tokens = (1 + 1 - 1) / 3 = 1/3; mean logp = -6/3 = -2
    # cov = (1 - 1/3)(-1 + 2) = 2/3, (2/3)(-3 + 2) = -2/3, (-1 - 1/3)(-2 + 2) = 0; masked: -inf
    adv = torch.tensor([1.0, -1.0], dtype=F64)
    logp = torch.tensor([[-1.0, -3.0], [-2.0, -9.0]], dtype=F64)
    mask = torch.tensor([[1, 1], [1, 0]])
    cov = token_covariance(adv, logp, mask)
    assert cov[0].tolist() == pytest.approx([2 / 3, -2 / 3]) and cov[1, 0] == 0
    assert cov[1, 1] == -torch.inf


@pytest.mark.parametrize("name, hp", [("clip_cov", {"clip_cov_ratio": 0.1}), ("kl_cov", {"kl_cov_ratio": 0.1})])
@pytest.mark.parametrize("k", [2, 4, 8])
def test_micro_batches_sum_to_the_mini_batch_with_one_selection(name, hp, k):
    algo = get(name, **hp)
    logp, old, mask, gids, rewards = batch()
    adv = algo.advantages(rewards, gids)
    torch.manual_seed(0)
    z = algo.loss_normalizer(adv, mask, gids, logp=logp, **({"old_logp": old} if name == "clip_cov" else {}))
    assert z["selected"].sum() >= 1 and not (z["selected"] & ~mask).any()
    from rlvr.update.step import rows_of

    def total(parts):
        lp = logp.clone().requires_grad_()
        loss = sum(algo.policy_loss(lp[i], old[i], adv[i], mask[i], gids[i], normalizer=rows_of(z, torch.arange(16), i))[0]
                   for i in parts)
        loss.backward()
        return loss.detach(), lp.grad

    whole_loss, whole_grad = total([torch.arange(16)])
    loss, grad = total(list(torch.arange(16).chunk(k)))
    assert abs(loss - whole_loss) <= 1e-10 and (grad - whole_grad).abs().max() <= 1e-10
    # the selected tokens really change the gradient
    plain = dict(z, selected=torch.zeros_like(z["selected"]))
    lp = logp.clone().requires_grad_()
    algo.policy_loss(lp, old, adv, mask, gids, normalizer=plain)[0].backward()
    assert (lp.grad - whole_grad).abs().max() > 1e-6


@pytest.fixture(scope="module")
def verl():
    core_algos = pytest.importorskip("verl.trainer.ppo.core_algos")
    config = pytest.importorskip("verl.workers.config")
    return core_algos, config


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("name, verl_fn, hp, policy_kw", [
    ("clip_cov", "compute_policy_loss_clip_cov", {"clip_cov_ratio": 0.1},
     {"loss_mode": "clip_cov", "clip_cov_ratio": 0.1, "clip_cov_lb": 1.0, "clip_cov_ub": 5.0}),
    ("kl_cov", "compute_policy_loss_kl_cov", {"kl_cov_ratio": 0.1, "ppo_kl_coef": 1.0},
     {"loss_mode": "kl_cov", "kl_cov_ratio": 0.1, "ppo_kl_coef": 1.0}),
])  # fmt: skip
def test_equals_verl_on_one_micro_batch(verl, seed, name, verl_fn, hp, policy_kw):
    core_algos, config = verl
    algo = get(name, **hp)
    logp, old, mask, gids, rewards = batch(seed)
    adv = algo.advantages(rewards, gids)
    cfg = config.ActorConfig(strategy="fsdp", rollout_n=4, ppo_micro_batch_size_per_gpu=1,
                             clip_ratio=0.2, policy_loss=config.PolicyLossConfig(**policy_kw))
    lp = logp.clone().requires_grad_()
    torch.manual_seed(seed)
    theirs, _ = getattr(core_algos, verl_fn)(
        old_log_prob=old, log_prob=lp, advantages=adv[:, None] * mask, response_mask=mask.to(F64),
        loss_agg_mode="token-mean", config=cfg)
    theirs.backward()
    ours_lp = logp.clone().requires_grad_()
    torch.manual_seed(seed)
    extra = {"old_logp": old} if name == "clip_cov" else {}
    z = algo.loss_normalizer(adv, mask, gids, logp=ours_lp.detach(), **extra)
    ours, stats = algo.policy_loss(ours_lp, old, adv, mask, gids, normalizer=z)
    ours.backward()
    assert z["selected"].sum() >= 1
    torch.testing.assert_close(ours.detach(), theirs.detach(), rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(ours_lp.grad, lp.grad, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("name", ["clip_cov", "kl_cov"])
def test_all_masked_batch_is_exactly_zero(name):
    algo = get(name)
    logp, old, mask, gids, rewards = batch()
    mask = torch.zeros_like(mask)
    adv = algo.advantages(rewards, gids)
    z = algo.loss_normalizer(adv, mask, gids, logp=logp)
    lp = logp.clone().requires_grad_()
    loss, stats = algo.policy_loss(lp, old, adv, mask, gids, normalizer=z)
    loss.backward()
    assert loss.item() == 0.0 and lp.grad.abs().max() == 0 and all(torch.isfinite(v) for v in stats.values())


def test_the_contract_sees_the_log_prob_keywords():
    assert algorithms.get_class("clip_cov").normalizer_logp == ("logp", "old_logp")
    assert algorithms.get_class("kl_cov").normalizer_logp == ("logp",)
    assert algorithms.get_class("grpo").normalizer_logp == ()
