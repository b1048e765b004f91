"""The shared RL loop. Read top to bottom; it never names an algorithm.

load base → each step: draw P prompts → G completions each → verifier rewards
→ algo.shape_rewards → algo.filter_groups (refill) → algo.advantages → old log-probs
→ k mini-batch updates (DeepSpeed, micro-batched, mini-batch normaliser) → statistics
→ metrics.jsonl + wandb → collapse check → checkpoint
"""

from __future__ import annotations

import copy
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

import algorithms
from evals.schema import Record
from evals.suites import get_suite, load_records
from evals.verifiers import get_reward
from rlvr.config import RunConfig
from rlvr.models import load_model_and_tokenizer
from rlvr.models import save_checkpoint as save_hf
from rlvr.policy import Policy
from rlvr.rollout import Rollouts, make_rollout_engine
from rlvr.run_state import (
    MetricsLog,
    PromptSampler,
    latest_checkpoint,
    load_checkpoint,
    read_status,
    rng_state,
    save_checkpoint,
    save_resolved_config,
    seed_everything,
    set_rng_state,
    write_status,
)
from rlvr.stats import CollapseDetector, group_stats, length_stats, token_taxonomy

COUNT_STATS = ("tokens", "kept", "dropped")  # policy_loss stats that are counts, not rates


@dataclass
class Batch:
    """One step's training batch: kept completions with rewards and advantages."""

    rollouts: Rollouts
    group_ids: torch.Tensor  # [N]
    rewards: torch.Tensor  # [N] shaped rewards
    adv: torch.Tensor | None = None


def cat_rollouts(parts: list[Rollouts], pad_id: int) -> Rollouts:
    """Concatenate rollouts of different padded widths (prompts left-, completions right-padded)."""
    if len(parts) == 1:
        return parts[0]
    P = max(p.prompt_ids.shape[1] for p in parts)
    T = max(p.completion_ids.shape[1] for p in parts)

    def left(x, w, v):
        return torch.nn.functional.pad(x, (w - x.shape[1], 0), value=v)

    def right(x, w, v):
        return torch.nn.functional.pad(x, (0, w - x.shape[1]), value=v)

    return Rollouts(
        torch.cat([left(p.prompt_ids, P, pad_id) for p in parts]),
        torch.cat([left(p.prompt_mask, P, 0) for p in parts]),
        torch.cat([right(p.completion_ids, T, pad_id) for p in parts]),
        torch.cat([right(p.completion_mask, T, 0) for p in parts]),
        torch.cat([right(p.sampling_logp, T, 0) for p in parts]),
        torch.cat([p.truncated for p in parts]),
        [t for p in parts for t in p.texts],
    )


def select(r: Rollouts, idx: torch.Tensor) -> Rollouts:
    i = idx.tolist()
    return Rollouts(
        r.prompt_ids[idx],
        r.prompt_mask[idx],
        r.completion_ids[idx],
        r.completion_mask[idx],
        r.sampling_logp[idx],
        r.truncated[idx],
        [r.texts[j] for j in i],
    )


class Trainer:
    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self.run_dir = Path(cfg.output_dir)
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        # algorithm and data are validated before any model is loaded
        algorithms.import_modules(cfg.algorithm.modules)
        self.algo = algorithms.get(cfg.algorithm.name, **cfg.algorithm.hparams)
        self.algo.bind(
            group_size=cfg.rollout.group_size,
            max_new_tokens=cfg.rollout.max_new_tokens,
            max_prompt_len=cfg.rollout.max_prompt_len,
        )
        self.records: list[Record] = load_records(cfg.data.train)
        self.reward_fn = get_reward(cfg.data.reward or get_suite(cfg.data.suite).reward)
        if not cfg.model.name_or_path:
            raise ValueError(
                "model.name_or_path is required for `rlvr train` (an HF id or a checkpoint dir)"
            )
        seed_everything(cfg.seed)
        model, self.tok = load_model_and_tokenizer(cfg.model.name_or_path)
        self.policy = Policy(model, cfg)
        self.ref_model = None
        if self.algo.needs_reference and not cfg.model.lora.enabled:
            self.ref_model, _ = load_model_and_tokenizer(cfg.model.name_or_path)
            self.ref_model.requires_grad_(False).eval()
        self.engine = make_rollout_engine(
            cfg.rollout, self.policy.module, self.tok, policy=self.policy
        )
        self.sampler = PromptSampler(len(self.records), cfg.seed)
        self.collapse = CollapseDetector(cfg.collapse)
        self.step = 0

    # ---- rollout -------------------------------------------------------------------------
    def rewards_for(self, roll: Rollouts, records: list[Record]) -> torch.Tensor:
        G = self.cfg.rollout.group_size
        return torch.tensor(
            [self.reward_fn(t, records[i // G].answer) for i, t in enumerate(roll.texts)]
        )

    def collect(self) -> tuple[Batch, dict]:
        """Sample until the algorithm keeps P groups (or its refill budget runs out)."""
        P, G = self.cfg.rollout.prompts_per_step, self.cfg.rollout.group_size
        kept: list[Batch] = []
        raw_rewards, all_gids, lengths, truncated = [], [], [], []
        n_kept_groups, rounds, next_gid = 0, 0, 0
        while True:
            want = P - n_kept_groups
            records = [self.records[i] for i in self.sampler.next(want)]
            roll = self.engine.generate(
                [r.prompt for r in records],
                G,
                seed=self.cfg.seed * 100_003 + self.step * 101 + rounds,
            )
            gids = torch.arange(next_gid, next_gid + want).repeat_interleave(G)
            next_gid += want
            rewards = self.rewards_for(roll, records)
            shaped = self.algo.shape_rewards(rewards, roll.lengths, roll.truncated)
            # filter on the verifier's rewards (as verl's DAPO recipe does), so groups that differ
            # only by a length penalty are not mistaken for mixed-reward groups
            keep = self.algo.filter_groups(rewards, gids)
            raw_rewards.append(rewards)
            all_gids.append(gids)
            lengths.append(roll.lengths)
            truncated.append(roll.truncated)
            idx = keep.nonzero().squeeze(-1)
            if len(idx):
                kept.append(Batch(select(roll, idx), gids[idx], shaped[idx]))
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
            "actor/kept_frac": n_kept_groups * G / len(rewards),
        }
        if not kept:
            return None, stats
        batch = Batch(
            cat_rollouts([b.rollouts for b in kept], self.tok.pad_token_id),
            torch.cat([b.group_ids for b in kept]),
            torch.cat([b.rewards for b in kept]),
        )
        return batch, stats

    # ---- update --------------------------------------------------------------------------
    def score(self, model, r: Rollouts, idx: torch.Tensor, with_stats: bool) -> dict:
        """Score rows `idx` with the padding columns they all share cut off (left of the prompts,
        right of the completions), then pad the per-token outputs back to the batch width."""
        prompt_mask, completion_mask = r.prompt_mask[idx], r.completion_mask[idx]
        P = max(int(prompt_mask.sum(-1).max()), 1)
        T = max(int(completion_mask.sum(-1).max()), 1)
        out = self.policy.score(
            model,
            r.prompt_ids[idx][:, -P:],
            prompt_mask[:, -P:],
            r.completion_ids[idx][:, :T],
            completion_mask[:, :T],
            self.cfg.rollout.temperature,
            with_stats,
        )
        width = r.completion_ids.shape[1]
        return {k: torch.nn.functional.pad(v, (0, width - T)) for k, v in out.items()}

    def micro_batches(self, idx: torch.Tensor, lengths: torch.Tensor) -> list[torch.Tensor]:
        """Split rows `idx` into micro-batches of similar completion `lengths` (indexed by row), so
        each carries little padding; the loss normaliser is per mini-batch, so the gradient is
        the same for any split."""
        idx = idx[torch.sort(lengths[idx], stable=True).indices]
        return list(idx.split(min(self.cfg.train.micro_batch_size, len(idx))))

    @torch.no_grad()
    def measure(self, batch: Batch, model=None) -> dict[str, torch.Tensor]:
        """No-grad pass over the whole batch: log-probs, entropy, p(token), Σp²."""
        model = model or self.policy.module
        micro = self.micro_batches(torch.arange(len(batch.rewards)), batch.rollouts.lengths)
        parts = [self.score(model, batch.rollouts, i, True) for i in micro]
        order = torch.cat(micro).argsort()  # micro-batches are grouped by length: restore row order
        return {k: torch.cat([p[k] for p in parts])[order].cpu() for k in parts[0]}

    def update(self, batch: Batch) -> dict:
        cfg, r = self.cfg.train, batch.rollouts
        mask = r.completion_mask
        on_policy = cfg.mini_batches == 1 and cfg.epochs == 1
        # With one update per batch the policy *is* the old policy: old log-probs come from the
        # update's own forward (ratio exactly 1), saving a full forward pass.
        before = None if on_policy else self.measure(batch)
        ref_logp = self.reference_logp(batch)
        sums: dict[str, float] = {}
        grad_norms, skipped, applied = [], 0, 0
        measured = {"logp": [], "entropy": [], "p_token": [], "collision": [], "idx": []}
        gen = torch.Generator().manual_seed(self.cfg.seed * 7919 + self.step)
        groups = batch.group_ids.unique()
        for _ in range(cfg.epochs):
            # shuffle whole groups so a mini-batch holds complete groups
            order = groups[torch.randperm(len(groups), generator=gen)]
            for mb_groups in order.tensor_split(cfg.mini_batches):
                mb = torch.isin(batch.group_ids, mb_groups).nonzero().squeeze(-1)
                if len(mb) == 0:
                    continue
                normalizer = self.algo.loss_normalizer(batch.adv[mb], mask[mb], batch.group_ids[mb])
                self.policy.zero_grad()
                finite = True
                for micro in self.micro_batches(mb, r.lengths):
                    out = self.score(self.policy.engine, r, micro, with_stats=on_policy)
                    old = out["logp"].detach() if on_policy else before["logp"][micro]
                    if on_policy:
                        measured["logp"].append(old.cpu())
                        for k in ("entropy", "p_token", "collision"):
                            measured[k].append(out[k].cpu())
                        measured["idx"].append(micro)
                    loss, stats = self.algo.policy_loss(
                        out["logp"],
                        old,
                        batch.adv[micro],
                        mask[micro],
                        batch.group_ids[micro],
                        normalizer=normalizer,
                        ref_logp=None if ref_logp is None else ref_logp[micro],
                    )
                    # a non-finite loss poisons the whole mini-batch update: skip its backward
                    # (the statistics of the remaining micro-batches are still measured)
                    finite = finite and bool(torch.isfinite(loss))
                    if not finite:
                        continue
                    self.policy.backward(loss)
                    tokens = float(stats.get("tokens", 0))
                    for k, v in stats.items():  # counts add up; rates are token-weighted
                        w = 1.0 if k in COUNT_STATS else tokens
                        sums[k] = sums.get(k, 0.0) + float(v) * w
                    sums["loss"] = sums.get("loss", 0.0) + loss.item()
                if finite:
                    norm, ok = self.policy.step()
                    grad_norms.append(norm)
                    finite = ok
                else:
                    self.policy.zero_grad()
                applied += finite
                skipped += not finite
        if on_policy and measured["idx"]:
            order = torch.cat(measured["idx"]).argsort()
            before = {
                k: torch.cat(measured[k])[order]
                for k in ("logp", "entropy", "p_token", "collision")
            }
        tokens = max(sums.get("tokens", 0.0), 1.0)
        metrics = {
            f"actor/{k}": v / tokens for k, v in sums.items() if k not in COUNT_STATS + ("loss",)
        }
        metrics["actor/loss"] = sums.get("loss", 0.0) / max(applied + skipped, 1)
        for k in COUNT_STATS:  # per pass over the batch
            if k in sums:
                metrics[f"actor/{k}_per_epoch"] = sums[k] / cfg.epochs
        metrics["actor/grad_norm"] = max(grad_norms) if grad_norms else float("nan")
        metrics["actor/skipped_updates"] = skipped
        metrics["actor/lr"] = self.policy.lr()
        if before is not None and "entropy" in before:
            ent0 = (before["entropy"] * mask).sum() / mask.sum().clamp(min=1)
            metrics["actor/entropy"] = float(ent0)
            metrics.update(token_taxonomy(batch.adv, mask, before["p_token"], before["collision"]))
            # rollout engine vs trainer log-probs of the same tokens: ~0 for hf, small for vllm
            diff = (r.sampling_logp - before["logp"]).abs() * mask
            metrics["rollout/logp_diff_mean"] = float(diff.sum() / mask.sum().clamp(min=1))
            metrics["rollout/logp_diff_max"] = float(diff.max())
            every = self.cfg.train.entropy_delta_every
            if every and self.step % every == 0:
                after = self.measure(batch)
                metrics["actor/entropy_delta"] = float(
                    (after["entropy"] * mask).sum() / mask.sum().clamp(min=1) - ent0
                )
        return metrics

    @torch.no_grad()
    def reference_logp(self, batch: Batch) -> torch.Tensor | None:
        if not self.algo.needs_reference:
            return None
        if self.ref_model is not None:
            return self.measure(batch, self.ref_model)["logp"]
        with self.policy.reference_context():
            return self.measure(batch)["logp"]

    # ---- the loop ------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "step": self.step,
            "sampler": self.sampler.state_dict(),
            "rng": rng_state(),
            "collapse": self.collapse.state_dict(),
        }

    def resume(self) -> None:
        ckpt = latest_checkpoint(self.run_dir)
        if ckpt is None:
            return
        state = load_checkpoint(ckpt, self.policy.engine)
        self.step = state["step"]
        self.sampler.load_state_dict(state["sampler"])
        self.collapse.load_state_dict(state["collapse"])
        set_rng_state(state["rng"])
        self.engine.sync_weights()
        print(f"resumed from {ckpt} at step {self.step}")

    def run(self) -> dict:
        cfg = self.cfg
        self.run_dir.mkdir(parents=True, exist_ok=True)
        status = read_status(self.run_dir)
        if (
            status
            and status["state"] in ("completed", "collapsed")
            and (self.run_dir / "final").exists()
        ):
            print(f"{self.run_dir} is already {status['state']}; nothing to do")
            return status
        save_resolved_config(self.run_dir, cfg)
        self.resume()
        log = MetricsLog(self.run_dir, cfg, resume_step=self.step)
        write_status(self.run_dir, "running", self.step)
        collapsed: tuple[int, str] | None = None  # (step, reason) of the first detection
        progress = _progress(cfg.train.steps, self.step, cfg.logging.progress)
        try:
            while self.step < cfg.train.steps:
                t0 = time.perf_counter()
                batch, metrics = self.collect()
                t1 = time.perf_counter()
                if batch is not None:
                    batch.adv = self.algo.advantages(batch.rewards, batch.group_ids)
                    metrics.update(self.update(batch))
                    self.engine.sync_weights()
                t2 = time.perf_counter()
                self.step += 1
                tokens = (
                    metrics["rollout/length_mean"]
                    * cfg.rollout.prompts_per_step
                    * cfg.rollout.group_size
                )
                metrics.update(
                    {
                        "perf/step_s": t2 - t0,
                        "perf/rollout_s": t1 - t0,
                        "perf/update_s": t2 - t1,
                        "perf/rollout_tokens_per_s": tokens
                        * metrics["rollout/gen_rounds"]
                        / max(t1 - t0, 1e-9),
                    }
                )
                log.log(self.step, metrics)
                progress.update(1)
                progress.set_postfix(
                    reward=f"{metrics['rollout/reward_mean']:.3f}",
                    entropy=f"{metrics.get('actor/entropy', float('nan')):.3f}",
                    step_s=f"{t2 - t0:.2f}",
                )
                # a step whose groups were all filtered out trained nothing: nothing to judge
                if batch is not None:
                    reason = self.collapse.update(
                        metrics["actor/entropy"],
                        metrics["rollout/reward_mean"],
                        metrics["actor/skipped_updates"] > 0,
                    )
                if reason and collapsed is None:
                    collapsed = (self.step, reason)
                    if cfg.collapse.stop:
                        break
                if (
                    cfg.checkpoint.every
                    and self.step % cfg.checkpoint.every == 0
                    and self.step < cfg.train.steps
                ):
                    save_checkpoint(
                        self.run_dir,
                        self.policy.engine,
                        self.step,
                        self.state_dict(),
                        cfg.checkpoint.keep,
                    )
                    if cfg.checkpoint.export_hf:  # kept for evaluation curves over training
                        self.export_hf(self.run_dir / "hf_checkpoints" / f"step_{self.step:06d}")
        except (
            Exception
        ) as err:  # recorded, then re-raised: the DAG sees a failed job with a reason
            write_status(self.run_dir, "failed", self.step, f"{type(err).__name__}: {err}")
            log.close()
            raise
        finally:
            progress.close()
        self.export_hf(self.run_dir / "final")
        if collapsed:
            write_status(self.run_dir, "collapsed", collapsed[0], collapsed[1], steps_run=self.step)
        else:
            write_status(self.run_dir, "completed", self.step, None, steps_run=self.step)
        log.close()
        return read_status(self.run_dir)

    def export_hf(self, dest: Path) -> None:
        """The current policy as a standard HF checkpoint (LoRA merged into a copy), atomically."""
        model = self.policy.module
        if self.cfg.model.lora.enabled:
            model = copy.deepcopy(model).merge_and_unload()
        tmp = dest.with_name(f".{dest.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        save_hf(model, self.tok, tmp)
        shutil.rmtree(dest, ignore_errors=True)
        tmp.rename(dest)


def _progress(total: int, initial: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, desc="rl", dynamic_ncols=True)


def train(cfg: RunConfig) -> dict:
    """One RL run. The process group stays up for later runs in this process; the CLI tears it
    down at exit (rlvr.policy.shutdown_distributed)."""
    return Trainer(cfg).run()
