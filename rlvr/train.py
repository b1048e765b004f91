"""The shared RL loop. Read top to bottom; it never names an algorithm.

load base → each step: draw P prompts → G completions each → verifier rewards
→ algo.shape_rewards → algo.filter_groups (refill) → algo.advantages → old log-probs
→ k mini-batch updates (DeepSpeed, micro-batched, mini-batch normaliser) → statistics
→ metrics.jsonl + wandb → collapse check → checkpoint

Data parallel (`torchrun --nproc_per_node=N -m rlvr train ...`): every rank draws the same P
prompts and samples its contiguous share of the groups, each group seeded by its own position
in the step's draw (so its completions do not depend on which rank samples it); the round is
then gathered, so every rank holds the whole batch and filtering, refill rounds, advantages and
statistics are the single-process ones. The update splits each mini-batch's rows over the ranks
(rlvr/update/step.py). Rank 0 writes metrics, status and exports; every rank its checkpoint part.
"""

from __future__ import annotations

import copy
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import torch

import algorithms
from evals.schema import Record
from evals.suites import get_suite
from evals.verifiers import get_reward
from rlvr.config import RunConfig
from rlvr.data import load_records
from rlvr.device import provenance, resolve_precision, set_threads
from rlvr.engines import check_run
from rlvr.io import atomic_write_json
from rlvr.models import check_model_source, load_model_and_tokenizer
from rlvr.models import save_checkpoint as save_hf
from rlvr.ranks import any_rank, gather_objects, is_main, launched_world_size, rank, world_size
from rlvr.retrieval import check_retriever
from rlvr.rollout import Rollouts, make_rollout_engine
from rlvr.rollout.base import cat_rollouts, select_rows
from rlvr.rollout.episode import episode_stats
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
from rlvr.stats import CollapseDetector, group_stats, length_stats
from rlvr.update import Batch, Policy, PolicyUpdate

PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: `rlvr train` stopped by SIGTERM; relaunching resumes


class StopSignal:
    """SIGTERM — what Slurm sends ahead of a time limit or a preemption, before SIGKILL — asks the
    loop to stop after the step in flight, at a step boundary, so the checkpoint it writes there
    resumes bit-identically. Installed only in the main thread (signals are delivered there)."""

    def __init__(self):
        self.received: int | None = None
        self._previous = None

    def __enter__(self) -> StopSignal:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.received = signum
        print(f"train: {signal.Signals(signum).name} received; stopping after this step", flush=True)

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


class Trainer:
    def __init__(self, cfg: RunConfig):
        cfg = cfg.model_copy(deep=True)  # precision `auto` is resolved into this copy
        self.precision = resolve_precision("train.precision", cfg.train.precision)
        cfg.train.precision = self.precision.used
        self.cfg = cfg
        self.run_dir = Path(cfg.output_dir)
        set_threads(cfg)
        # algorithm, data, engines and the model's location are validated before any model loads
        check_ranks(cfg)
        algorithms.import_modules(cfg.algorithm.modules)  # your algorithms and engines register
        check_run(cfg)
        check_retriever(cfg.rollout.episode)
        self.algo = algorithms.get(cfg.algorithm.name, **cfg.algorithm.hparams)
        self.algo.bind(
            group_size=cfg.rollout.group_size,
            max_new_tokens=cfg.rollout.max_new_tokens,
            max_prompt_len=cfg.rollout.max_prompt_len,
        )
        if not Path(cfg.data.train).is_file():
            raise FileNotFoundError(
                f"data.train: no such file {cfg.data.train!r} (write a suite's files with "
                "`rlvr data --suite NAME --out DIR`)"
            )
        self.records: list[Record] = load_records(cfg.data.train)
        self.reward_fn = get_reward(cfg.data.reward or get_suite(cfg.data.suite).reward)
        if not cfg.model.name_or_path:
            raise ValueError(
                "model.name_or_path is required for `rlvr train` (an HF id or a checkpoint dir)"
            )
        check_model_source(cfg.model.name_or_path)
        seed_everything(cfg.seed)
        model, self.tok = load_model_and_tokenizer(cfg.model.name_or_path)
        self.policy = Policy(model, cfg)
        self.ref_model = None
        if self.algo.needs_reference and not cfg.model.lora.enabled:
            self.ref_model, _ = load_model_and_tokenizer(cfg.model.name_or_path)
            self.ref_model.requires_grad_(False).eval()
        self.update = PolicyUpdate(self.policy, self.algo, cfg, self.ref_model)
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

    def sample_round(self, records: list[Record], round_: int) -> tuple[Rollouts, torch.Tensor]:
        """G completions of each record and their verifier rewards. Each rank samples its
        contiguous share of the groups; every rank gets the whole round back, in group order.
        Group k of a round is seeded by (seed, step, round, k) alone."""
        G, world, me = self.cfg.rollout.group_size, world_size(), rank()
        base = (self.cfg.seed * 100_003 + self.step * 101 + round_) * 4099
        lo, hi = len(records) * me // world, len(records) * (me + 1) // world
        mine = None
        if hi > lo:
            roll = self.engine.generate(
                [r.prompt for r in records[lo:hi]], G, [base + k for k in range(lo, hi)]
            )
            mine = (roll, self.rewards_for(roll, records[lo:hi]))
        parts = [p for p in gather_objects(mine) if p is not None]
        return cat_rollouts([r for r, _ in parts], self.tok.pad_token_id), torch.cat([w for _, w in parts])

    def collect(self) -> tuple[Batch, dict]:
        """Sample until the algorithm keeps P groups (or its refill budget runs out)."""
        P, G = self.cfg.rollout.prompts_per_step, self.cfg.rollout.group_size
        kept: list[Batch] = []
        raw_rewards, all_gids, lengths, truncated, sampled, episodes = [], [], [], [], [], []
        n_kept_groups, rounds, next_gid = 0, 0, 0
        while True:
            want = P - n_kept_groups
            records = [self.records[i] for i in self.sampler.next(want)]
            roll, rewards = self.sample_round(records, rounds)
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
            stats |= episode_stats(cat_rollouts(episodes, self.tok.pad_token_id))
        if not kept:
            return None, stats
        batch = Batch(
            cat_rollouts([b.rollouts for b in kept], self.tok.pad_token_id),
            torch.cat([b.group_ids for b in kept]),
            torch.cat([b.rewards for b in kept]),
        )
        return batch, stats

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
        if is_main():
            print(f"resumed from {ckpt} at step {self.step}")

    def run(self) -> dict:
        cfg, main = self.cfg, is_main()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        status = read_status(self.run_dir)
        if (
            status
            and status["state"] in ("completed", "collapsed")
            and (self.run_dir / "final").exists()
        ):
            print(f"{self.run_dir} is already {status['state']}; nothing to do")
            return status
        # wall_s in status.json: this run's seconds over all its launches (a resumed run adds on)
        self.wall_clock = (time.monotonic(), float((status or {}).get("wall_s") or 0.0))
        if main:
            save_resolved_config(self.run_dir, cfg)
            atomic_write_json(self.run_dir / "provenance.json", provenance(self.precision))
        self.resume()
        log = MetricsLog(self.run_dir, cfg, resume_step=self.step, enabled=main)
        self.write_status("running", self.step)
        collapsed: tuple[int, str] | None = None  # (step, reason) of the first detection
        progress = _progress(cfg.train.steps, self.step, cfg.logging.progress and main)
        with StopSignal() as stop:
            try:
                while self.step < cfg.train.steps:
                    batch, metrics = self.train_step()
                    log.log(self.step, metrics)
                    progress.update(1)
                    progress.set_postfix(
                        reward=f"{metrics['rollout/reward_mean']:.3f}",
                        entropy=f"{metrics.get('actor/entropy', float('nan')):.3f}",
                        step_s=f"{metrics['perf/step_s']:.2f}",
                    )
                    # a step whose groups were all filtered out trained nothing: nothing to judge
                    reason = None if batch is None else self.collapse.update(
                        metrics["actor/entropy"],
                        metrics["rollout/reward_mean"],
                        metrics["actor/skipped_updates"] > 0,
                    )
                    if reason and collapsed is None:
                        collapsed = (self.step, reason)
                        if cfg.collapse.stop:
                            break
                    self.maybe_checkpoint()
                    # every rank stops at the same step, whichever received the signal
                    if any_rank(stop.received is not None) and self.step < cfg.train.steps:
                        name = signal.Signals(stop.received or signal.SIGTERM).name
                        return self.preempt(log, name)
            except Exception as err:  # recorded, then re-raised: the DAG sees a failed job
                # by the rank that failed (the launcher then stops the others mid-collective); the
                # first failure is the cause: a peer that lost its connection to it keeps it
                where = f"rank {rank()}: " if world_size() > 1 else ""
                if (read_status(self.run_dir) or {}).get("state") != "failed":
                    write_status(self.run_dir, "failed", self.step, f"{where}{type(err).__name__}: {err}")
                log.close()
                raise
            finally:
                progress.close()
        self.export_hf(self.run_dir / "final")
        if collapsed:
            self.write_status("collapsed", collapsed[0], collapsed[1], steps_run=self.step)
        else:
            self.write_status("completed", self.step, None, steps_run=self.step)
        log.close()
        return self.final_status()

    def write_status(self, state: str, step: int, reason: str | None = None, **extra) -> None:
        """status.json, by rank 0 (a failing rank writes its own reason: see `run`)."""
        if is_main():
            started, before = self.wall_clock
            wall_s = round(before + time.monotonic() - started, 1)
            write_status(self.run_dir, state, step, reason, world_size=world_size(), wall_s=wall_s, **extra)

    def final_status(self) -> dict:
        """The status rank 0 wrote, on every rank (the gather also waits for the write)."""
        return gather_objects(read_status(self.run_dir) if is_main() else None)[0]

    def train_step(self) -> tuple[Batch | None, dict]:
        """collect → advantages → update → push the weights to the engine; the step's metrics."""
        t0 = time.perf_counter()
        batch, metrics = self.collect()
        t1 = time.perf_counter()
        if batch is not None:
            batch.adv = self.advantages(batch)
            metrics.update(self.update(batch, self.step))
            self.engine.sync_weights()
        t2 = time.perf_counter()
        self.step += 1
        metrics.update(
            {
                "perf/step_s": t2 - t0,
                "perf/rollout_s": t1 - t0,
                "perf/update_s": t2 - t1,
                "perf/rollout_tokens_per_s": metrics["rollout/generated_tokens"] / max(t1 - t0, 1e-9),
            }
        )
        return batch, metrics

    def advantages(self, batch: Batch) -> torch.Tensor:
        """algo.advantages on the kept batch, with the completion lengths (the model's own
        tokens) if it takes them."""
        extra = {"lengths": batch.rollouts.model_lengths} if self.algo.advantage_lengths else {}
        return self.algo.advantages(batch.rewards, batch.group_ids, **extra)

    def maybe_checkpoint(self) -> None:
        """Every checkpoint.every steps (not the last: final/ follows): DeepSpeed state + loop
        state, and an HF export for evaluation curves over training."""
        cfg = self.cfg
        if cfg.checkpoint.every and self.step % cfg.checkpoint.every == 0 and self.step < cfg.train.steps:
            self.save_state()
            if cfg.checkpoint.export_hf:
                self.export_hf(self.run_dir / "hf_checkpoints" / f"step_{self.step:06d}")

    def save_state(self) -> None:
        save_checkpoint(
            self.run_dir, self.policy.engine, self.step, self.state_dict(), self.cfg.checkpoint.keep
        )

    def preempt(self, log, signal_name: str) -> dict:
        """Checkpoint at this step boundary and record `preempted`: relaunching the same command
        resumes here, and the CLI exits with PREEMPTED_EXIT_CODE so the scheduler retries it."""
        if latest_checkpoint(self.run_dir) != self.run_dir / "checkpoints" / f"step_{self.step:06d}":
            self.save_state()
        reason = f"{signal_name} received; checkpoint at step {self.step}, relaunch to resume"
        self.write_status("preempted", self.step, reason)
        log.close()
        return self.final_status()

    def export_hf(self, dest: Path) -> None:
        """The current policy as a standard HF checkpoint (LoRA merged into a copy), atomically;
        by rank 0 (every rank holds the same weights at ZeRO 0-2)."""
        if not is_main():
            return
        model = self.policy.module
        if self.cfg.model.lora.enabled:
            model = copy.deepcopy(model).merge_and_unload()
        tmp = dest.with_name(f".{dest.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        save_hf(model, self.tok, tmp)
        shutil.rmtree(dest, ignore_errors=True)
        tmp.rename(dest)


def check_ranks(cfg: RunConfig) -> None:
    """The launcher's world size against train.processes × train.nodes and the step's groups,
    before any compute; a torchrun launch without the fields records its world size in them."""
    world, asked = launched_world_size(), cfg.train.processes * cfg.train.nodes
    if world == 1 and asked > 1:
        raise ValueError(
            f"train.processes={cfg.train.processes} × train.nodes={cfg.train.nodes} ranks asked, "
            f"but this process was not started by a launcher: run `torchrun "
            f"--nproc_per_node={cfg.train.processes} -m rlvr train ...` (the DAG's train rule does)"
        )
    if world > 1 and asked not in (1, world):
        raise ValueError(
            f"torchrun started {world} ranks but train.processes × train.nodes = {asked}; "
            "make them agree (or leave both at 1)"
        )
    if world > 1 and asked == 1:  # recorded in the resolved config
        cfg.train.processes = int(os.environ.get("LOCAL_WORLD_SIZE", world))
        cfg.train.nodes = world // cfg.train.processes
    P = cfg.rollout.prompts_per_step
    if P % world:
        raise ValueError(
            f"rollout.prompts_per_step={P} must be divisible by the {world} data-parallel ranks "
            "(whole groups on each rank); pick a multiple of the rank count"
        )


def _progress(total: int, initial: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, desc="rl", dynamic_ncols=True)


def train(cfg: RunConfig) -> dict:
    """One RL run. The process group stays up for later runs in this process; the CLI tears it
    down at exit (rlvr.update.distributed.shutdown_distributed)."""
    trainer = Trainer(cfg)
    try:
        return trainer.run()
    finally:
        trainer.engine.close()
