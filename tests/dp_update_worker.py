"""One policy update per registered algorithm on one fixed global batch, on however many ranks
this process is one of (`python tests/dp_update_worker.py OUT` or `torchrun --standalone
--nproc_per_node=2 tests/dp_update_worker.py OUT`). Rank 0 writes, per algorithm, the updated
weights and the update's metrics to OUT/<name>.pt; tests/test_data_parallel.py compares a
1-process run with a 2-rank one.

The batch is the same on every rank and in every run: a tiny Qwen2 (seeded) samples 8 prompts ×
4 completions with fixed seeds, and the rewards are a fixed random 0/1 draw. Some cases change it
the same way everywhere (TWEAKS): injected tokens (a loss mask with holes), an engine whose
log-probs differ from the trainer's (the mismatch correction on), a loss that is NaN on the
micro-batch holding one row (so on one rank only), mini-batches of fewer rows than 4 ranks, and a
global RNG that differs per rank (as the hf engine leaves it) under Clip-Cov's random draw.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import algorithms  # noqa: E402
from rlvr.config import load_config  # noqa: E402
from rlvr.models import build_tiny_model  # noqa: E402
from rlvr.ranks import is_main, rank  # noqa: E402
from rlvr.rollout import NativeRolloutEngine  # noqa: E402
from rlvr.rollout.base import select_rows  # noqa: E402
from rlvr.update import Batch, Policy, PolicyUpdate  # noqa: E402

PROMPTS = [f"Q: {a}+{b}=" for a, b in ((1, 2), (13, 5), (40, 41), (7, 77), (9, 9), (2, 50), (61, 3), (8, 30))]
G = 4
NAN_GROUP = 100  # the label of the one row whose micro-batch has a NaN loss (nan_group_test)
# (label, algorithm, hparams, train overrides): every registered algorithm off-policy (2
# mini-batches: a measured `before`, gathered), GRPO also on-policy (the update's own forward)
# and at ZeRO 1 and 2, and the outside example algorithm; then cases whose batch is changed by the
# TWEAKS named in their label
EXTRA = [
    ("grpo@on_policy", "grpo", {}, ["train.mini_batches=1"]),
    ("grpo@zero1", "grpo", {}, ["train.zero_stage=1"]),
    ("grpo@zero2", "grpo", {}, ["train.zero_stage=2"]),
    ("median_baseline_example", "median_baseline_example", {}, []),
    ("grpo@holes", "grpo", {}, []),
    ("grpo@correction", "grpo", {}, ["correction.tis=true", "correction.seq_mask=true"]),
    ("wapo@correction+holes", "wapo", {}, ["correction.tis=true", "correction.seq_mask=true"]),
    ("nan_row", "nan_group_test", {"nan_group": NAN_GROUP}, []),
    ("nan_row@zero1", "nan_group_test", {"nan_group": NAN_GROUP}, ["train.zero_stage=1"]),
    ("nan_row@zero2", "nan_group_test", {"nan_group": NAN_GROUP}, ["train.zero_stage=2"]),
    ("grpo@few_rows", "grpo", {}, []),
    ("grpo@few_rows@zero1", "grpo", {}, ["train.zero_stage=1"]),
    ("grpo@few_rows@zero2", "grpo", {}, ["train.zero_stage=2"]),
    # every unclipped token a candidate, a fifth of them drawn at random
    ("clip_cov@rank_rng", "clip_cov", {"clip_cov_ratio": 0.2, "clip_cov_lb": -1e6, "clip_cov_ub": 1e6}, []),
]
# tests/test_data_parallel.py also runs these on 4 ranks: mini-batches of fewer rows than ranks,
# and a NaN on one rank of 4
ON_FOUR_RANKS = ["grpo@few_rows", "grpo@few_rows@zero1", "grpo@few_rows@zero2", "nan_row@zero2"]


def cases() -> list[tuple[str, str, dict, list[str]]]:
    algorithms.import_modules(["ext_algo_example", "nan_algo"])
    outside = ("median_baseline_example", "nan_loss_test", "nan_grad_test", "nan_group_test")
    own = [(name, name, {}, []) for name in algorithms.available() if name not in outside]
    return own + EXTRA


def with_holes(batch: Batch, algo) -> Batch:
    """Tokens 3-5 of every completion injected (a search episode's passage): not the model's."""
    r = batch.rollouts
    r.loss_mask = r.completion_mask.clone()
    r.loss_mask[:, 3:6] = 0
    return batch


def with_mismatch(batch: Batch, algo) -> Batch:
    """An engine whose log-probs differ from the trainer's by a fixed random amount per token
    (TIS weights from 0.3 to the cap), and rows 2 and 9 by e^1.2 more (the sequence mask drops them)."""
    r = batch.rollouts
    shift = 0.6 * torch.randn(r.sampling_logp.shape, generator=torch.Generator().manual_seed(11))
    shift[[2, 9]] += 1.2
    r.sampling_logp = r.sampling_logp - shift * r.model_mask
    return batch


def with_nan_row(batch: Batch, algo) -> Batch:
    """Row 1 relabelled into a group of its own (advantages kept): nan_group_test's loss is NaN
    on the micro-batch that holds it, i.e. on one rank only; its mini-batch is the first one."""
    batch.group_ids = batch.group_ids.clone()
    batch.group_ids[1] = NAN_GROUP
    return batch


def with_few_rows(batch: Batch, algo) -> Batch:
    """Two groups, of 2 and 3 rows (as DAPO leaves a step with one or two groups), in 2 mini-batches:
    on 4 ranks, each mini-batch leaves some ranks without a row."""
    rows = torch.tensor([0, 1, 4, 5, 6])
    r = select_rows(batch.rollouts, rows)
    rewards = algo.shape_rewards(torch.tensor([1.0, 0, 0, 1, 1]), r.lengths, r.truncated)
    out = Batch(r, batch.group_ids[rows], rewards)
    extra = {"lengths": r.lengths} if algo.advantage_lengths else {}
    out.adv = algo.advantages(out.rewards, out.group_ids, **extra)
    return out


TWEAKS = {
    "holes": [with_holes],
    "correction": [with_mismatch],
    "correction+holes": [with_holes, with_mismatch],
    "few_rows": [with_few_rows],
    "nan_row": [with_nan_row],
}


def fixed_batch(model, tok, cfg, algo) -> Batch:
    roll = NativeRolloutEngine(model, tok, cfg.rollout).generate(PROMPTS, G, list(range(len(PROMPTS))))
    gids = torch.arange(len(PROMPTS)).repeat_interleave(G)
    rewards = (torch.rand(len(gids), generator=torch.Generator().manual_seed(7)) < 0.5).float()
    batch = Batch(roll, gids, algo.shape_rewards(rewards, roll.lengths, roll.truncated))
    extra = {"lengths": roll.lengths} if algo.advantage_lengths else {}
    batch.adv = algo.advantages(batch.rewards, gids, **extra)
    return batch


def main(out: Path, only: list[str]) -> None:
    torch.set_num_threads(1)
    out.mkdir(parents=True, exist_ok=True)
    todo = cases()
    if is_main():  # what this process had registered, and the cases it ran
        manifest = {"registered": algorithms.available(), "cases": [c[0] for c in todo]}
        (out / "cases.json").write_text(json.dumps(manifest))
    for label, name, hparams, overrides in todo:
        if only and label not in only:
            continue
        cfg = load_config(None, [
            "rollout.max_new_tokens=12", "train.lr=1e-3", "train.mini_batches=2",
            "train.micro_batch_size=3", "train.entropy_delta_every=1", *overrides,
        ])  # fmt: skip
        algo = algorithms.get(name, **hparams).bind(group_size=G, max_new_tokens=12, max_prompt_len=64)
        model, tok = build_tiny_model("qwen2", seed=3)
        ref = build_tiny_model("qwen2", seed=3)[0].requires_grad_(False).eval() if algo.needs_reference else None
        policy = Policy(model, cfg)
        # Adam's eps raised so its step is about linear in the gradient and the weights show
        # the gradient: at eps 1e-8 an element whose gradient is ~eps turns float noise of 1e-10
        # into a step difference of ~lr·1e-2 (seen: 3 of 65 536 elements at 1e-5), which says
        # nothing about the gradient; a scale error (Adam's blind spot) now shows in the weights
        for group in policy.optimizer.param_groups:
            group["eps"] = 1e-2
        batch = fixed_batch(policy.module, tok, cfg, algo)
        for tweak in (t for part in label.split("@") for t in TWEAKS.get(part, [])):
            batch = tweak(batch, algo)
        if label.endswith("@rank_rng"):  # as the hf engine leaves it: seeded by this rank's prompts
            torch.manual_seed(1000 + rank())
        rng = torch.get_rng_state()
        metrics = PolicyUpdate(policy, algo, cfg, ref)(batch, step=0)
        rng_kept = torch.equal(torch.get_rng_state(), rng)  # the hooks' draws left no trace
        if is_main():
            state = {k: v.detach().clone() for k, v in policy.module.state_dict().items()}
            torch.save({"weights": state, "metrics": metrics, "rng_kept": rng_kept}, out / f"{label}.pt")


if __name__ == "__main__":
    from rlvr.update.distributed import shutdown_distributed

    main(Path(sys.argv[1]), sys.argv[2:])
    shutdown_distributed()
