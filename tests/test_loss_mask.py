"""Search episodes put injected tokens (retrieved passages) inside a completion, so the loss mask
has holes, not only trailing padding. Every shipped algorithm must give those tokens exactly zero
gradient, and score the batch as if the injected tokens were not there at all."""

import pytest
import torch

import algorithms

# Clip-Cov draws its tokens at random among the candidates, in the order of their positions:
# with every candidate selected, the closed-up batch selects the same tokens
HPARAMS = {"clip_cov": {"clip_cov_ratio": 1.0}}
SHIPPED = sorted(n for n in algorithms.available() if algorithms.get_class(n).__module__.startswith("algorithms."))
G, T = 4, 10
# rows: model tokens, then an injected span (0s), then model tokens again, then padding
MASK = torch.tensor([
    [1, 1, 1, 0, 0, 0, 1, 1, 0, 0],
    [1, 1, 0, 0, 1, 1, 1, 1, 1, 0],
    [1, 0, 0, 0, 0, 1, 1, 0, 0, 0],
    [1, 1, 1, 1, 1, 1, 1, 1, 1, 1],
] * 2, dtype=torch.float32)


def loss_and_grad(algo, logp, old, ref, adv, mask, gids):
    torch.manual_seed(0)  # the same draw for an algorithm that selects tokens at random
    logp = logp.clone().requires_grad_(True)
    extra = {"logp": logp.detach(), "old_logp": old}
    normalizer = algo.loss_normalizer(adv, mask, gids, **{k: extra[k] for k in algo.normalizer_logp})
    keywords = {}
    if algo.loss_keywords.normalizer:
        keywords["normalizer"] = normalizer
    if algo.loss_keywords.ref_logp:
        keywords["ref_logp"] = ref
    loss, _ = algo.policy_loss(logp, old, adv, mask, gids, **keywords)
    (grad,) = torch.autograd.grad(loss, logp, allow_unused=True)
    return loss.detach(), torch.zeros_like(logp) if grad is None else grad


def compact(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Each row's masked-in entries moved to the front, the rest zero: the batch without holes."""
    out = torch.zeros_like(x)
    for i in range(len(x)):
        kept = x[i][mask[i] > 0]
        out[i, : len(kept)] = kept
    return out


@pytest.mark.parametrize("name", SHIPPED)
def test_injected_tokens_get_zero_gradient_and_change_nothing(name):
    algo = algorithms.get(name, **HPARAMS.get(name, {})).bind(group_size=G, max_new_tokens=T, max_prompt_len=16)
    gen = torch.Generator().manual_seed(0)
    n = len(MASK)
    logp = -torch.rand(n, T, generator=gen) * 3
    old = logp + 0.05 * torch.randn(n, T, generator=gen)  # off-policy: ratios away from 1
    ref = logp + 0.1 * torch.randn(n, T, generator=gen)
    gids = torch.arange(n // G).repeat_interleave(G)
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 1.0, 1.0])
    lengths = MASK.sum(-1)
    adv = algo.advantages(rewards, gids, **({"lengths": lengths} if algo.advantage_lengths else {}))
    loss, grad = loss_and_grad(algo, logp, old, ref, adv, MASK, gids)
    assert torch.isfinite(loss)
    assert (grad[MASK == 0] == 0).all(), grad * (MASK == 0)
    assert grad[MASK > 0].abs().sum() > 0 or (adv == 0).all()
    # the same batch with the holes closed up: the same loss
    holes = torch.where(MASK > 0, torch.zeros_like(logp), torch.full_like(logp, 123.0))  # junk in the holes
    junk_loss, _ = loss_and_grad(algo, logp + holes, old - holes, ref + holes, adv, MASK, gids)
    closed = compact(MASK, MASK)
    closed_loss, _ = loss_and_grad(algo, compact(logp, MASK), compact(old, MASK), compact(ref, MASK), adv, closed, gids)
    torch.testing.assert_close(junk_loss, loss, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(closed_loss, loss, rtol=1e-6, atol=1e-7)


def updated_weights(batch_of, loss_mask_of, junk: bool, tis: bool):
    """One GRPO update of a tiny Qwen2 on a fixed batch, with the given loss mask; `junk`
    overwrites the sampling log-probs of the masked-out tokens, which nothing may read (TIS reads
    them token by token, the sequence mask by their geometric mean)."""
    from rlvr.config import load_config
    from rlvr.models import build_tiny_model
    from rlvr.update import Policy, PolicyUpdate

    cfg = load_config(None, ["rollout.max_new_tokens=12", "train.lr=1e-3", "train.mini_batches=2",
                             "train.micro_batch_size=3", f"correction.tis={str(tis).lower()}", f"correction.seq_mask={str(tis).lower()}",
                             "train.entropy_delta_every=0"])
    torch.manual_seed(0)
    model, tok = build_tiny_model("qwen2", seed=3)
    policy = Policy(model, cfg)
    algo = algorithms.get("grpo").bind(group_size=4, max_new_tokens=12, max_prompt_len=64)
    batch = batch_of(policy.module, tok, cfg, algo)
    r = batch.rollouts
    r.loss_mask = loss_mask_of(r.completion_mask)
    if junk:
        r.sampling_logp = torch.where(r.model_mask > 0, r.sampling_logp, torch.full_like(r.sampling_logp, -50.0))
    metrics = PolicyUpdate(policy, algo, cfg, None)(batch, step=0)
    weights = {k: v.detach().clone() for k, v in policy.module.state_dict().items()}
    return weights, metrics


def with_hole(mask: torch.Tensor) -> torch.Tensor:
    """Tokens 3-5 of every completion as if a search episode had injected them."""
    holey = mask.clone()
    holey[:, 3:6] = 0
    return holey


@pytest.mark.slow
def test_the_update_trains_on_the_model_tokens_only():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from dp_update_worker import fixed_batch

    holey, _ = updated_weights(fixed_batch, with_hole, junk=False, tis=False)
    whole, _ = updated_weights(fixed_batch, lambda m: m, junk=False, tis=False)
    assert any((whole[k] - holey[k]).abs().max() > 1e-6 for k in holey)  # the holes are not trained
    holey, metrics = updated_weights(fixed_batch, with_hole, junk=False, tis=True)
    junk, junk_metrics = updated_weights(fixed_batch, with_hole, junk=True, tis=True)
    for k in holey:
        torch.testing.assert_close(junk[k], holey[k], rtol=0, atol=0)  # the holes' log-probs unread
    assert junk_metrics["rollout/logp_diff_max"] == metrics["rollout/logp_diff_max"] < 1e-3
