"""One policy update on a step's batch, through the DeepSpeed engine. It never names an algorithm.

    for each epoch, mini-batches of whole groups (shuffled by a generator seeded by seed and step):
        the algorithm's normaliser over the whole mini-batch
        micro-batches of similar length: score → algo.policy_loss → backward
        one clipped optimizer step (a non-finite loss or gradient skips it, and is counted)
    then the batch's statistics under the policy before the update (the one that sampled it, at
    rollout.staleness 0): entropy, token taxonomy, the behaviour-vs-current log-prob gap, the
    ratio π_θ / π_old the clips saw, and every few steps the entropy change the update made.

π_old (train.old_logp): the recomputed log-probs before the update (proximal; with one
mini-batch and one epoch the update's own forward gives them, ratio exactly 1 at its step), or
the behaviour log-probs the engine sampled with.

Micro-batch losses are already divided by the mini-batch normaliser, so the gradient does not
depend on how a mini-batch is split (rlvr/update/policy.py: unmanaged gradient accumulation).

Data parallel (N ranks under torchrun): every rank holds the whole step's batch (rlvr/train.py
gathers it), so advantages, mini-batches and `loss_normalizer` are computed over the global
batch on every rank, exactly as on one process; each rank then scores and back-propagates only
its share of each mini-batch's rows (`rank_rows`), DeepSpeed reduces the gradients, and what is
measured per row (old log-probs, statistics) is gathered back. An algorithm needs nothing extra
for this: its normaliser already sees the whole mini-batch, and its hooks run under an RNG state
every rank agrees on (`agreed_rng`), so a random draw is one process's too.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from rlvr.config import RunConfig
from rlvr.ranks import any_rank, gather_objects, rank, world_size
from rlvr.rollout.base import Rollouts
from rlvr.stats import token_taxonomy
from rlvr.update.correction import Correction, mismatch_correction, scale_gradient

COUNT_STATS = ("tokens", "kept", "dropped")  # policy_loss stats that are counts, not rates
SCORE_STATS = ("entropy", "p_token", "collision")


@dataclass
class Batch:
    """One step's training batch: kept completions with rewards and advantages."""

    rollouts: Rollouts
    group_ids: torch.Tensor  # [N]
    rewards: torch.Tensor  # [N] shaped rewards
    adv: torch.Tensor | None = None


@dataclass
class Tally:
    """What the mini-batch steps of one update add up to."""

    sums: dict[str, float] = field(default_factory=dict)
    grad_norms: list[float] = field(default_factory=list)
    applied: int = 0
    skipped: int = 0
    # r = π_θ / π_old over every token trained on (whatever an algorithm masks inside its loss),
    # each mini-batch before its optimizer step: the ratio the clips see
    ratio: dict[str, float] = field(default_factory=lambda: {"sum": 0.0, "tokens": 0.0, "min": math.inf, "max": -math.inf})

    def add_ratio(self, logp: torch.Tensor, old: torch.Tensor, mask: torch.Tensor) -> None:
        m = mask > 0
        if not m.any():
            return
        r = (logp.detach().float() - old.float()).clamp(-20, 20).exp()[m]
        self.ratio["sum"] += float(r.sum())
        self.ratio["tokens"] += float(m.sum())
        self.ratio["min"] = min(self.ratio["min"], float(r.min()))
        self.ratio["max"] = max(self.ratio["max"], float(r.max()))

    def add(self, loss: torch.Tensor, stats: dict) -> None:
        tokens = float(stats.get("tokens", 0))
        for k, v in stats.items():  # counts add up; rates are token-weighted
            w = 1.0 if k in COUNT_STATS else tokens
            self.sums[k] = self.sums.get(k, 0.0) + float(v) * w
        self.sums["loss"] = self.sums.get("loss", 0.0) + loss.item()

    def metrics(self, epochs: int) -> dict[str, float]:
        sums: dict[str, float] = {}  # every rank's sums (a rank may have trained no rows)
        for part in gather_objects(self.sums):
            for k, v in part.items():
                sums[k] = sums.get(k, 0.0) + v
        tokens = max(sums.get("tokens", 0.0), 1.0)
        out = {f"actor/{k}": v / tokens for k, v in sums.items() if k not in COUNT_STATS + ("loss",)}
        out["actor/loss"] = sums.get("loss", 0.0) / max(self.applied, 1)  # a skipped step adds none
        for k in COUNT_STATS:  # per pass over the batch
            if k in sums:
                out[f"actor/{k}_per_epoch"] = sums[k] / epochs
        out["actor/grad_norm"] = max(self.grad_norms) if self.grad_norms else float("nan")
        out["actor/skipped_updates"] = self.skipped
        parts = [p for p in gather_objects(self.ratio) if p["tokens"]]
        if parts:
            out["actor/ratio_mean"] = sum(p["sum"] for p in parts) / sum(p["tokens"] for p in parts)
            out["actor/ratio_min"] = min(p["min"] for p in parts)
            out["actor/ratio_max"] = max(p["max"] for p in parts)
        return out


class OnPolicyScores:
    """With one update per batch the policy *is* the old policy, so the update's own forward gives
    the old log-probs (ratio exactly 1) and the batch's statistics, saving a full forward pass.
    Kept per micro-batch, returned in row order."""

    def __init__(self):
        self.parts: dict[str, list[torch.Tensor]] = {k: [] for k in ("logp", *SCORE_STATS)}
        self.rows: list[torch.Tensor] = []

    def add(self, rows: torch.Tensor, out: dict[str, torch.Tensor]) -> None:
        self.parts["logp"].append(out["logp"].detach().cpu())
        for k in SCORE_STATS:
            self.parts[k].append(out[k].cpu())
        self.rows.append(rows)

    def in_row_order(self) -> dict[str, torch.Tensor] | None:
        """Every rank's rows, joined in row order."""
        mine = (torch.cat(self.rows), {k: torch.cat(v) for k, v in self.parts.items()}) if self.rows else None
        parts = [p for p in gather_objects(mine) if p is not None]
        if not parts:
            return None
        return joined_rows(parts)


def joined_rows(parts: list[tuple[torch.Tensor, dict[str, torch.Tensor]]]) -> dict[str, torch.Tensor]:
    """(rows, {name: [len(rows), ...]}) parts, disjoint rows, into one dict in ascending row order
    (padded to the widest part: completion widths are the batch's, but a part may be cut)."""
    rows = torch.cat([r for r, _ in parts])
    order = rows.argsort()
    out = {}
    for k in parts[0][1]:
        width = max(t[k].shape[-1] for _, t in parts)
        cat = torch.cat([torch.nn.functional.pad(t[k], (0, width - t[k].shape[-1])) for _, t in parts])
        out[k] = cat[order]
    return out


@contextlib.contextmanager
def agreed_rng(device: torch.device, *key: int) -> Iterator[None]:
    """Torch's RNG (CPU, and `device` if CUDA) seeded from `key` alone, restored afterwards. The
    algorithm's hooks run under it: the global RNG differs between ranks (the hf engine seeds it
    with each rank's prompts), so a hook that draws at random (Clip-Cov's token selection) would
    otherwise draw differently on each rank and on one process."""
    seed = 0
    for k in key:
        seed = (seed * 1_000_003 + int(k)) % 2**63
    cuda = [device] if torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.default_generator.manual_seed(seed)
        if cuda:
            torch.cuda.manual_seed(seed)
        yield


def rows_of(normalizer, mb: torch.Tensor, micro: torch.Tensor):
    """The part of a mini-batch normaliser that micro-batch rows `micro` (a subset of the
    ascending rows `mb`) need: a dict's tensors with one row per mini-batch row are cut to the
    micro-batch's rows; a scalar, or anything else, passes unchanged."""
    if not isinstance(normalizer, dict):
        return normalizer
    at = torch.searchsorted(mb, micro)
    return {
        k: v[at.to(v.device)] if torch.is_tensor(v) and v.dim() > 0 and len(v) == len(mb) else v
        for k, v in normalizer.items()
    }


class PolicyUpdate:
    def __init__(self, policy, algo, cfg: RunConfig, ref_model=None):
        self.policy, self.algo, self.cfg, self.ref_model = policy, algo, cfg, ref_model
        self.rank, self.world = rank(), world_size()
        # π_old of the ratio: the weights before this update (recomputed), or the engine's own
        # log-probs of the tokens it sampled (train.old_logp; algorithms/README.md)
        self.proximal = cfg.train.old_logp == "proximal"
        # a policy_loss without normalizer= normalises over what it is given: the whole mini-batch
        self.whole_mini_batches = not algo.loss_keywords.normalizer
        if self.whole_mini_batches and self.world > 1:
            raise ValueError(
                f"{type(algo).__name__}.policy_loss takes no normalizer=, so a mini-batch cannot be "
                f"split over {self.world} ranks; accept normalizer= (algorithms/README.md) or train "
                "on one process"
            )
        if self.whole_mini_batches:
            print(
                f"update: {type(algo).__name__}.policy_loss takes no normalizer=, so each mini-batch "
                f"is scored as one micro-batch (train.micro_batch_size={cfg.train.micro_batch_size} "
                "does not apply)"
            )

    def __call__(self, batch: Batch, step: int) -> dict:
        train, correcting = self.cfg.train, self.cfg.correction.enabled
        # the mismatch correction needs π_old of every row before the first optimizer step;
        # behaviour log-probs as π_old: the statistics still need the current policy's
        on_policy = self.proximal and train.mini_batches == 1 and train.epochs == 1 and not correcting
        before = None if on_policy else self.measure(batch)
        fix = self.correction(batch, before) if correcting else None
        ref_logp = self.reference_logp(batch)
        tally, recorder = Tally(), OnPolicyScores() if on_policy else None
        for index, rows in enumerate(self.mini_batches(batch, step)):
            key = (self.cfg.seed, step, index)  # the same on every rank
            self.mini_batch_step(batch, rows, tally, before, ref_logp, recorder, fix, key)
        if recorder is not None:
            before = recorder.in_row_order()
        metrics = tally.metrics(train.epochs)
        if fix is not None:
            metrics.update(fix.stats)
        metrics["actor/lr"] = self.policy.lr()
        if before is not None and "entropy" in before:
            metrics.update(self.batch_statistics(batch, before, step))
        return metrics

    def mini_batches(self, batch: Batch, step: int) -> Iterator[torch.Tensor]:
        """Row indices of each mini-batch, epoch after epoch; a mini-batch holds whole groups."""
        gen = torch.Generator().manual_seed(self.cfg.seed * 7919 + step)
        groups = batch.group_ids.unique()
        for _ in range(self.cfg.train.epochs):
            order = groups[torch.randperm(len(groups), generator=gen)]
            for mb_groups in order.tensor_split(self.cfg.train.mini_batches):
                rows = torch.isin(batch.group_ids, mb_groups).nonzero().squeeze(-1)
                if len(rows):
                    yield rows

    def correction(self, batch: Batch, before: dict) -> Correction:
        """The rollout/trainer mismatch correction of the whole batch (rlvr/update/correction.py)."""
        c = self.cfg.correction
        return mismatch_correction(
            before["logp"], batch.rollouts.sampling_logp, batch.rollouts.model_mask,
            c.tis_cap if c.tis else None, tuple(c.seq_band) if c.seq_mask else None,
        )  # fmt: skip

    def mini_batch_step(self, batch: Batch, mb, tally: Tally, before, ref_logp, recorder, fix=None, key=(0,)) -> None:
        """One optimizer step on rows `mb`. Old log-probs come from `before` (the measurement
        before the update), or from this forward when on-policy (`recorder` keeps them). `fix`,
        the mismatch correction: its dropped completions leave the mask, its token weights scale
        the gradient of the current log-probs. The algorithm's hooks run under an RNG state seeded
        by `key` (and a micro-batch's first row), so their random draws agree across ranks."""
        r, mask = batch.rollouts, batch.rollouts.model_mask
        if fix is not None:
            mask = mask * fix.keep[:, None].to(mask)
        extra = {}
        if self.algo.normalizer_logp:  # the mini-batch's log-probs before its update, no grad
            now = self.scored_rows(self.policy.module, r, mb, False)["logp"]
            known = {"logp": now, "old_logp": now if before is None else self.old_logp(batch, before, mb)}
            extra = {k: known[k] for k in self.algo.normalizer_logp}
        # the whole (global) mini-batch's normaliser, on every rank
        with agreed_rng(self.policy.device, *key):
            normalizer = self.algo.loss_normalizer(batch.adv[mb], mask[mb], batch.group_ids[mb], **extra)
        self.policy.zero_grad()
        finite, calls, trained, ratios = True, 0, [], []
        if self.whole_mini_batches:
            micro_batches = [mb]
        else:  # a rank may have no rows: a mini-batch of fewer rows than ranks
            micro_batches = self.micro_batches(self.rank_rows(mb, r.lengths, self.rank), r.lengths)
        for micro in micro_batches:
            out = self.score(self.policy.engine, r, micro, with_stats=recorder is not None)
            if recorder is not None:
                old = out["logp"].detach()
                recorder.add(micro, out)
            else:
                old = self.old_logp(batch, before, micro)
            logp = out["logp"]
            ratios.append((logp.detach(), old, mask[micro]))
            if fix is not None and fix.weights is not None:
                logp = scale_gradient(logp, fix.weights[micro].to(logp))
            keywords = {}  # what this algorithm's policy_loss accepts (algorithms/contract.py)
            if self.algo.loss_keywords.normalizer:
                keywords["normalizer"] = rows_of(normalizer, mb, micro)
            if self.algo.loss_keywords.ref_logp:
                keywords["ref_logp"] = None if ref_logp is None else ref_logp[micro]
            with agreed_rng(self.policy.device, *key, int(micro.min())):
                loss, stats = self.algo.policy_loss(
                    logp, old, batch.adv[micro], mask[micro], batch.group_ids[micro], **keywords
                )
            # a non-finite loss poisons the whole mini-batch update: skip its backward (the
            # remaining micro-batches are still scored, for the on-policy recorder)
            finite = finite and bool(torch.isfinite(loss))
            if not finite:
                continue
            self.policy.backward(loss)
            calls += 1
            trained.append((loss.detach(), stats))
        self.pad_backward_calls(r, mb, calls)
        finite = not any_rank(not finite)  # one rank's non-finite loss skips the step everywhere
        if finite:
            norm, finite = self.policy.step()
            tally.grad_norms.append(norm)
        else:
            self.discard_gradients(r, mb)
        # a skipped step trained nothing, on any rank: its statistics are not counted either
        for loss, stats in trained if finite else []:
            tally.add(loss, stats)
        for logp, old, m in ratios if finite else []:
            tally.add_ratio(logp, old, m)
        tally.applied += finite
        tally.skipped += not finite

    def old_logp(self, batch: Batch, before: dict, rows: torch.Tensor) -> torch.Tensor:
        """π_old of rows `rows`: the recomputed log-probs (`before` the update) or the behaviour
        policy's, those the engine sampled with."""
        return (before["logp"] if self.proximal else batch.rollouts.sampling_logp)[rows]

    def batch_statistics(self, batch: Batch, before: dict, step: int) -> dict[str, float]:
        """Statistics of the batch under the policy `before` the update (the one that sampled it
        when rollout.staleness is 0)."""
        r, mask = batch.rollouts, batch.rollouts.model_mask
        ent0 = (before["entropy"] * mask).sum() / mask.sum().clamp(min=1)
        metrics = {"actor/entropy": float(ent0)}
        metrics.update(token_taxonomy(batch.adv, mask, before["p_token"], before["collision"]))
        # the behaviour policy (the engine's log-probs, of the weights of update t - staleness) vs
        # the current one's, of the same tokens: ~1e-6 on CPU at staleness 0, small for vllm,
        # the policy's drift over k updates otherwise
        diff = (r.sampling_logp - before["logp"]).abs() * mask
        metrics["rollout/logp_diff_mean"] = float(diff.sum() / mask.sum().clamp(min=1))
        metrics["rollout/logp_diff_max"] = float(diff.max())
        every = self.cfg.train.entropy_delta_every
        if every and step % every == 0:
            after = self.measure(batch)
            metrics["actor/entropy_delta"] = float(
                (after["entropy"] * mask).sum() / mask.sum().clamp(min=1) - ent0
            )
        return metrics

    # ---- splitting rows over ranks ----------------------------------------------------------
    def rank_rows(self, rows: torch.Tensor, lengths: torch.Tensor, rank: int) -> torch.Tensor:
        """Rank `rank`'s share of `rows`: every world-th row by completion length, so ranks get
        about the same number of rows and tokens (none, for a rank ≥ len(rows)). All of them on
        one process."""
        if self.world == 1:
            return rows
        by_length = rows[torch.sort(lengths[rows], stable=True).indices]
        return by_length[rank :: self.world].sort().values

    def pad_backward_calls(self, r: Rollouts, mb: torch.Tensor, done: int) -> None:
        """Zero-loss backward passes, so every rank reduces the same gradients: at ZeRO 2/3
        (which reduce inside backward, collectively) up to the calls of the rank with the most
        micro-batches; otherwise up to one, so a rank that trained nothing (no rows, or a
        non-finite first loss) still holds a gradient for every parameter when step() reduces.
        `done`: this rank's backward calls so far."""
        if self.world == 1:
            return
        most = 1
        if self.policy.reduces_in_backward:
            most = max(
                len(self.micro_batches(self.rank_rows(mb, r.lengths, k), r.lengths)) for k in range(self.world)
            )
        for _ in range(most - done):
            out = self.score(self.policy.engine, r, mb[:1], with_stats=False)
            self.policy.backward(out["logp"].sum() * 0.0)

    def discard_gradients(self, r: Rollouts, mb: torch.Tensor) -> None:
        """Drop this mini-batch's gradients without an optimizer step. At ZeRO 2/3 across ranks
        they are already reduced into DeepSpeed's partitions, which engine.zero_grad does not
        clear (the next step would add them in): a NaN backward on every rank makes DeepSpeed's
        own overflow check skip its step and clear them."""
        if not self.policy.reduces_in_backward:
            self.policy.zero_grad()
            return
        out = self.score(self.policy.engine, r, mb[:1], with_stats=False)
        self.policy.backward(out["logp"].sum() * float("nan"))
        _, applied = self.policy.step()
        assert not applied, "DeepSpeed applied a step whose gradient is NaN"

    @torch.no_grad()
    def scored_rows(self, model, r: Rollouts, rows: torch.Tensor, with_stats: bool) -> dict[str, torch.Tensor]:
        """No-grad scores [len(rows), T] of rows `rows` (ascending) under `model`: each rank
        scores its share in micro-batches of similar length, and the parts are gathered."""
        mine = self.rank_rows(rows, r.lengths, self.rank)
        parts = [(m, {k: v.cpu() for k, v in self.score(model, r, m, with_stats).items()})
                 for m in self.micro_batches(mine, r.lengths)] if len(mine) else []
        local = (torch.cat([m for m, _ in parts]).sort().values, joined_rows(parts)) if parts else None
        gathered = [p for p in gather_objects(local) if p is not None]
        rows_seen, out = torch.cat([p[0] for p in gathered]).sort().values, joined_rows(gathered)
        assert torch.equal(rows_seen, rows), "every row is scored exactly once"
        return out

    # ---- scoring rows of a batch ------------------------------------------------------------
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
        if not len(idx):  # a rank with no rows of this mini-batch
            return []
        idx = idx[torch.sort(lengths[idx], stable=True).indices]
        return list(idx.split(min(self.cfg.train.micro_batch_size, len(idx))))

    def measure(self, batch: Batch, model=None) -> dict[str, torch.Tensor]:
        """No-grad pass over the whole batch: log-probs, entropy, p(token), Σp²."""
        rows = torch.arange(len(batch.rewards))
        return self.scored_rows(model or self.policy.module, batch.rollouts, rows, True)

    @torch.no_grad()
    def reference_logp(self, batch: Batch) -> torch.Tensor | None:
        if not self.algo.needs_reference:
            return None
        if self.ref_model is not None:
            return self.measure(batch, self.ref_model)["logp"]
        with self.policy.reference_context():
            return self.measure(batch)["logp"]
