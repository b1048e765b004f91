"""One step's training batch: draw P prompts → G completions each → verifier rewards →
algo.shape_rewards → algo.filter_groups, refilling until P groups are kept.

A batch is numbered by the step that trains it (`index`); everything random in it is seeded by
(seed, index, round, group), so the same batch comes out whichever process generates it and
whenever (rlvr/lag.py generates ahead of the step). The prompt sampler is the only state, and
batches are always collected in index order.

Data parallel: every rank draws the same P prompts and samples its contiguous share of the
groups, each group seeded by its own position in the draw (so its completions do not depend on
which rank samples it); the round is then gathered, so every rank holds the whole batch and
filtering, refill rounds and statistics are the single-process ones.
"""

from __future__ import annotations

import torch

from evals.schema import Record
from rlvr.config import RunConfig
from rlvr.ranks import gather_objects, rank, world_size
from rlvr.rollout import Rollouts
from rlvr.rollout.base import cat_rollouts, select_rows
from rlvr.rollout.episode import episode_stats
from rlvr.run_state import PromptSampler
from rlvr.stats import group_stats, length_stats
from rlvr.update import Batch


class Collector:
    def __init__(self, cfg: RunConfig, records: list[Record], reward_fn, algo, engine, pad_id: int):
        self.cfg, self.records, self.reward_fn, self.algo, self.engine = cfg, records, reward_fn, algo, engine
        self.pad_id = pad_id
        self.sampler = PromptSampler(len(records), cfg.seed)

    def rewards_for(self, roll: Rollouts, records: list[Record]) -> torch.Tensor:
        G = self.cfg.rollout.group_size
        return torch.tensor(
            [self.reward_fn(t, records[i // G].answer) for i, t in enumerate(roll.texts)]
        )

    def sample_round(self, records: list[Record], index: int, round_: int) -> tuple[Rollouts, torch.Tensor]:
        """G completions of each record and their verifier rewards. Each rank samples its
        contiguous share of the groups; every rank gets the whole round back, in group order.
        Group k of a round is seeded by (seed, index, round, k) alone."""
        G, world, me = self.cfg.rollout.group_size, world_size(), rank()
        base = (self.cfg.seed * 100_003 + index * 101 + round_) * 4099
        lo, hi = len(records) * me // world, len(records) * (me + 1) // world
        mine = None
        if hi > lo:
            roll = self.engine.generate(
                [r.prompt for r in records[lo:hi]], G, [base + k for k in range(lo, hi)]
            )
            mine = (roll, self.rewards_for(roll, records[lo:hi]))
        parts = [p for p in gather_objects(mine) if p is not None]
        return cat_rollouts([r for r, _ in parts], self.pad_id), torch.cat([w for _, w in parts])

    def collect(self, index: int) -> tuple[Batch | None, dict]:
        """Batch `index`: sample until the algorithm keeps P groups (or its refill budget runs
        out); its rollout statistics. None when no group was kept."""
        P, G = self.cfg.rollout.prompts_per_step, self.cfg.rollout.group_size
        kept: list[Batch] = []
        raw_rewards, all_gids, lengths, truncated, sampled, episodes = [], [], [], [], [], []
        n_kept_groups, rounds, next_gid = 0, 0, 0
        while True:
            want = P - n_kept_groups
            records = [self.records[i] for i in self.sampler.next(want)]
            roll, rewards = self.sample_round(records, index, rounds)
            gids = torch.arange(next_gid, next_gid + want).repeat_interleave(G)
            next_gid += want
            # lengths are the model's own tokens: an episode's injected passages are not its length
            shaped = self.algo.shape_rewards(rewards, roll.model_lengths, roll.truncated)
            # filter on the verifier's rewards (as verl's DAPO recipe does), so groups that differ
            # only by a length penalty are not mistaken for mixed-reward groups
            keep = self.algo.filter_groups(rewards, gids)
            raw_rewards.append(rewards)
            all_gids.append(gids)
            lengths.append(roll.model_lengths)
            truncated.append(roll.truncated)
            sampled.append(roll.model_lengths.sum())  # the model's tokens, not injected ones
            if roll.episode is not None:
                episodes.append(roll)
            idx = keep.nonzero().squeeze(-1)
            if len(idx):
                kept.append(Batch(select_rows(roll, idx), gids[idx], shaped[idx]))
            n_kept_groups += int(gids[idx].unique().numel())
            rounds += 1
            if n_kept_groups >= P or rounds > self.algo.max_gen_rounds:
                break
        if n_kept_groups < P and self.algo.on_short_batch == "error":
            raise RuntimeError(
                f"{self.cfg.algorithm.name}: kept {n_kept_groups}/{P} groups after {rounds} generation rounds "
                "(algorithm.hparams.on_short_batch=error); raise max_gen_rounds or allow 'truncate'"
            )
        rewards, gids = torch.cat(raw_rewards), torch.cat(all_gids)
        stats = {
            **group_stats(rewards, gids),
            **length_stats(torch.cat(lengths), torch.cat(truncated)),
            "rollout/gen_rounds": rounds,
            # every completion sampled this step, refill rounds included: the rollout compute C
            # of the scaling-curve fits (rlvr/report/scaling.py)
            "rollout/generated_tokens": int(sum(sampled)),
            "actor/kept_frac": n_kept_groups * G / len(rewards),
        }
        if episodes:
            stats |= episode_stats(cat_rollouts(episodes, self.pad_id))
        if not kept:
            return None, stats
        batch = Batch(
            cat_rollouts([b.rollouts for b in kept], self.pad_id),
            torch.cat([b.group_ids for b in kept]),
            torch.cat([b.rewards for b in kept]),
        )
        return batch, stats
