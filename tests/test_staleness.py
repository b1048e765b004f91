"""The policy lag (rollout.staleness k, rlvr/lag.py) through the loop: the batch of step t is
sampled by the weights of update t - k; the real overlap (a rollout process) trains the same
bytes as the emulation, also across SIGKILL / SIGTERM with batches in flight; which π_old the
ratio uses (train.old_logp); the ratio and the clips act once the policy moves."""

import json
import random
import signal
from pathlib import Path

import pytest
import torch
from conftest import run_overrides
from test_train import rlvr_train, tail, wait_for_rows

from rlvr.config import ConfigError, load_config
from rlvr.models import load_model_and_tokenizer
from rlvr.train import Trainer

pytestmark = pytest.mark.slow


def trainer_for(base: Path, data: Path, out: Path, *extra: str) -> Trainer:
    return Trainer(load_config(None, run_overrides(base, data, out, *extra)))


def record_batches(trainer: Trainer) -> dict[int, object]:
    """The batch each step trains, by step (wrapping the loop's own update call)."""
    seen, update = {}, trainer.update

    class Recording:
        def __getattr__(self, name):
            return getattr(update, name)

        def __call__(self, batch, step):
            seen[step] = batch
            return update(batch, step)

    trainer.update = Recording()
    return seen


def sampled_logp_under(path: Path, batch, trainer: Trainer) -> torch.Tensor:
    """The log-probs the checkpoint at `path` gives the batch's sampled tokens."""
    model, _ = load_model_and_tokenizer(path)
    rows = torch.arange(len(batch.rewards))
    return trainer.update.scored_rows(model, batch.rollouts, rows, False)["logp"]


@pytest.mark.parametrize("k", [0, 2])
def test_the_batch_of_step_t_is_sampled_by_the_weights_of_update_t_minus_k(sft_base, math_data, tmp_path, k):
    """The engine's sampling log-probs of step t's batch equal a forward of the checkpoint of
    step max(0, t - k), and not of the step after it (the test tells the versions apart)."""
    trainer = trainer_for(sft_base, math_data, tmp_path, "train.steps=5", "rollout.prompts_per_step=4",
                          "checkpoint.every=1", f"rollout.staleness={k}", "train.lr=1e-3")  # fmt: skip
    seen = record_batches(trainer)
    trainer.run()
    trainer.batches.close()

    def checkpoint(step: int) -> Path:
        return sft_base if step == 0 else tmp_path / "hf_checkpoints" / f"step_{step:06d}"

    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    for t in range(5):
        batch = seen[t]
        mask = batch.rollouts.model_mask
        version = max(0, t - k)
        assert rows[t]["rollout/staleness"] == t - version
        gap = ((sampled_logp_under(checkpoint(version), batch, trainer) - batch.rollouts.sampling_logp) * mask).abs()
        assert gap.max() < 1e-4, (t, version, float(gap.max()))
        if version + 1 < 5:  # the next weights are measurably other ones
            later = sampled_logp_under(checkpoint(version + 1), batch, trainer) - batch.rollouts.sampling_logp
            assert (later * mask).abs().max() > 1e-3, (t, version)


def run_and_capture_old(base, data, out, *extra) -> tuple[list[dict], list[tuple], dict]:
    """A run's metrics rows, and for every policy_loss call the π_old it was handed with the
    batch it came from (rows matched by value against the batch's sampling log-probs)."""
    trainer = trainer_for(base, data, out, *extra)
    calls, loss = [], trainer.algo.policy_loss

    def spy(logp, old, adv, mask, gids, **kw):
        calls.append((logp.detach().clone(), old.clone(), mask.clone()))
        return loss(logp, old, adv, mask, gids, **kw)

    trainer.algo.policy_loss = spy
    seen = record_batches(trainer)
    trainer.run()
    trainer.batches.close()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return rows, calls, seen


def test_the_ratio_is_one_on_policy_and_moves_with_lag_and_mini_batches(sft_base, math_data, tmp_path):
    common = ("train.steps=3", "rollout.prompts_per_step=8", "train.lr=1e-3", "checkpoint.every=0")
    rows, calls, _ = run_and_capture_old(sft_base, math_data, tmp_path / "on", *common)
    assert all(r["actor/ratio_min"] == r["actor/ratio_max"] == 1.0 for r in rows)
    assert all(r["rollout/staleness"] == 0 for r in rows)
    # proximal π_old at staleness 2 and one mini-batch: the update's own forward, still ratio 1
    rows, _, _ = run_and_capture_old(sft_base, math_data, tmp_path / "lag", *common, "rollout.staleness=2")
    assert all(r["actor/ratio_min"] == r["actor/ratio_max"] == 1.0 for r in rows)
    assert rows[-1]["rollout/logp_diff_mean"] > 1e-3  # but the behaviour policy is 2 updates old
    # four mini-batches: the later ones see the earlier ones' updates
    rows, _, _ = run_and_capture_old(sft_base, math_data, tmp_path / "mb", *common, "train.mini_batches=4")
    assert rows[0]["actor/ratio_max"] > 1.01 and rows[0]["actor/ratio_min"] < 0.99
    assert rows[0]["actor/clipfrac_low"] + rows[0]["actor/clipfrac_high"] > 0


def test_behaviour_and_proximal_old_logp_are_what_policy_loss_receives(sft_base, math_data, tmp_path):
    """train.old_logp=behaviour hands policy_loss the engine's sampling log-probs; proximal the
    trainer's recomputed ones, which differ from them by the lag."""
    common = ("train.steps=3", "rollout.prompts_per_step=8", "train.lr=1e-3", "checkpoint.every=0",
              "rollout.staleness=1", "train.mini_batches=2", "train.micro_batch_size=256")  # fmt: skip
    for mode in ("behaviour", "proximal"):
        rows, calls, seen = run_and_capture_old(sft_base, math_data, tmp_path / mode, *common, f"train.old_logp={mode}")
        width = max(b.rollouts.sampling_logp.shape[1] for b in seen.values())
        behaviour = torch.cat([torch.nn.functional.pad(b.rollouts.sampling_logp, (0, width - b.rollouts.sampling_logp.shape[1]))
                               for b in seen.values()])  # fmt: skip
        matched = 0
        for _, old, mask in calls:
            for row, m in zip(old, mask, strict=True):
                row, m = torch.nn.functional.pad(row, (0, width - len(row))), torch.nn.functional.pad(m, (0, width - len(m)))
                hits = ((behaviour - row).abs() * m).amax(-1) == 0
                matched += bool(hits.any())
        total = sum(len(old) for _, old, _ in calls)
        if mode == "behaviour":
            assert matched == total  # every π_old row is an engine row, bit for bit
            assert rows[-1]["actor/ratio_max"] > 1.0 and rows[-1]["actor/ratio_min"] < 1.0
        else:
            assert matched < total / 2  # recomputed: the weights moved since sampling


def test_grpo_and_wapo_clips_act_on_a_lagged_run(sft_base, math_data, tmp_path):
    """Behaviour π_old four updates old, at a high lr: the clip of GRPO and WAPO's cap (set low
    here, 1 + 0.1, so a short run reaches it) cut tokens."""
    common = ("train.steps=6", "rollout.prompts_per_step=8", "train.lr=2e-3", "checkpoint.every=0",
              "rollout.staleness=4", "train.old_logp=behaviour", "train.mini_batches=4")  # fmt: skip
    grpo, _, _ = run_and_capture_old(sft_base, math_data, tmp_path / "grpo", *common)
    assert max(r["actor/clipfrac_low"] + r["actor/clipfrac_high"] for r in grpo) > 1e-3
    wapo, _, _ = run_and_capture_old(sft_base, math_data, tmp_path / "wapo", *common, "algorithm.name=wapo",
                                     "algorithm.hparams.clip_ratio_high=0.1")  # fmt: skip
    assert max(r["actor/clipfrac_high"] for r in wapo) > 1e-3
    assert all(r["actor/clipfrac_low"] == 0 for r in wapo)  # WAPO has no lower clip


def test_overlap_trains_the_emulations_bytes_across_kills_and_preemptions(sft_base, math_data, tmp_path):
    """rollout.overlap (a rollout process generating during the update) gives the emulated lag's
    metrics.jsonl and weights byte for byte; so do a SIGKILL and SIGTERMs at random steps with
    batches in flight, each relaunched."""
    common = ["train.steps=8", "rollout.prompts_per_step=8", "checkpoint.every=2", "rollout.staleness=2",
              "train.mini_batches=2", "train.lr=5e-4"]  # fmt: skip
    log = tmp_path / "train.log"
    emulated, overlapped = tmp_path / "emulated", tmp_path / "overlapped"
    killed, preempted = tmp_path / "killed", tmp_path / "preempted"
    assert rlvr_train(log, *run_overrides(sft_base, math_data, emulated, *common)).wait() == 0, tail(log)
    overlap = [*common, "rollout.overlap=true"]
    assert rlvr_train(log, *run_overrides(sft_base, math_data, overlapped, *overlap)).wait() == 0, tail(log)

    proc = rlvr_train(log, *run_overrides(sft_base, math_data, killed, *overlap))
    wait_for_rows(proc, killed / "metrics.jsonl", 3)  # past the step-2 checkpoint
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert json.loads((killed / "status.json").read_text())["state"] == "running", tail(log)
    assert rlvr_train(log, *run_overrides(sft_base, math_data, killed, *overlap)).wait() == 0, tail(log)

    rows = random.randint(1, 5)
    proc = rlvr_train(log, *run_overrides(sft_base, math_data, preempted, *overlap))
    wait_for_rows(proc, preempted / "metrics.jsonl", rows)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait() == 75, (rows, tail(log))
    status = json.loads((preempted / "status.json").read_text())
    assert status["state"] == "preempted" and status["step"] < 8, status
    # relaunched without the overlap: the in-flight batches resume in the synchronous loop too
    assert rlvr_train(log, *run_overrides(sft_base, math_data, preempted, *common)).wait() == 0, tail(log)

    expected = (emulated / "metrics.jsonl").read_bytes()
    assert b'"rollout/staleness": 2' in expected
    ref, _ = load_model_and_tokenizer(emulated / "final")
    for run in (overlapped, killed, preempted):
        assert (run / "metrics.jsonl").read_bytes() == expected, (run, rows)
        other, _ = load_model_and_tokenizer(run / "final")
        for x, y in zip(ref.state_dict().values(), other.state_dict().values(), strict=True):
            assert torch.equal(x, y), run


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["rollout.overlap=true"], "rollout.overlap needs rollout.staleness >= 1"),
        (["train.old_logp=behaviour", "correction.tis=true"], "need train.old_logp=proximal"),
        (["rollout.overlap=true", "rollout.staleness=1", "train.processes=2"], "set train.processes=1"),
        (["train.old_logp=recomputed"], "train.old_logp"),
        (["rollout.staleness=-1"], "rollout.staleness"),
    ],
)
def test_bad_lag_settings_fail_in_one_line_before_compute(overrides, message):
    with pytest.raises(ConfigError, match=message) as err:
        load_config(None, overrides)
    assert "\n" not in str(err.value)
