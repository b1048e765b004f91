"""Search episodes through the whole loop: a tiny base warm-started on openbook traces trains with
multi-turn rollouts (BM25 over the suite's corpus), deterministically, resuming bit-identically
after a SIGKILL; the trainer scores exactly the tokens the engine sampled, and the injected
passages take no part in the update."""

import json
import signal

import pytest
import torch
from conftest import run_overrides, search_settings
from test_train import rlvr_train, tail, wait_for_rows

import algorithms
from rlvr.config import load_config
from rlvr.models import load_model_and_tokenizer
from rlvr.rollout import make_rollout_engine
from rlvr.update import Policy

pytestmark = pytest.mark.slow


def test_a_search_run_is_deterministic_and_resumes_bit_identically(search_base, openbook, tmp_path):
    common = ["train.steps=6", "rollout.prompts_per_step=4", "rollout.group_size=4", "checkpoint.every=2",
              *search_settings(openbook)]  # fmt: skip
    straight, killed, log = tmp_path / "straight", tmp_path / "killed", tmp_path / "train.log"
    assert rlvr_train(log, *run_overrides(search_base, openbook, straight, *common)).wait() == 0, tail(log)
    proc = rlvr_train(log, *run_overrides(search_base, openbook, killed, *common))
    wait_for_rows(proc, killed / "metrics.jsonl", 3)  # past the step-2 checkpoint
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert json.loads((killed / "status.json").read_text())["state"] == "running", "finished before the kill"
    assert rlvr_train(log, *run_overrides(search_base, openbook, killed, *common)).wait() == 0, tail(log)
    assert (killed / "metrics.jsonl").read_bytes() == (straight / "metrics.jsonl").read_bytes()
    a, _ = load_model_and_tokenizer(straight / "final")
    b, _ = load_model_and_tokenizer(killed / "final")
    for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=0)
    rows = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    # the base searches: episodes have several turns and injected passages
    assert sum(r["episode/searches"] for r in rows) > 0 and all(r["episode/turns"] >= 1 for r in rows)
    assert all(0 < r["episode/injected_frac"] < 1 for r in rows)
    # the trainer's log-probs of the sampled tokens, with the passages in context, are the sampler's
    assert max(r["rollout/logp_diff_max"] for r in rows) < 1e-4
    # generated tokens (the scaling fits' compute) and the lengths count the model's only, not the
    # passages: 16 episodes a step (GRPO never refills)
    for r in rows:
        assert r["rollout/generated_tokens"] == pytest.approx(r["rollout/length_mean"] * 16, abs=0.5)


def test_the_loss_gives_injected_tokens_exactly_zero_gradient(search_base, openbook):
    """A real episode batch scored by the trainer's forward: the sampler's log-probs are the
    trainer's on every model token, and the GRPO loss's gradient is exactly zero on every
    injected token's log-prob (and not on the model's)."""
    cfg = load_config(None, [f"model.name_or_path={search_base}", *search_settings(openbook), "logging.wandb=false"])
    model, tok = load_model_and_tokenizer(search_base)
    roll = make_rollout_engine(cfg.rollout, model, tok).generate(
        ["Question: In which country does Tiru live?\n", "Question: Where does Bako live?\n"], 4, [1, 2])
    injected = (roll.completion_mask - roll.loss_mask).bool()
    assert injected.any() and (roll.loss_mask.sum(-1) > 0).all()
    policy = Policy(model, cfg)
    logp = policy.score(policy.module, roll.prompt_ids, roll.prompt_mask, roll.completion_ids,
                        roll.completion_mask, cfg.rollout.temperature)["logp"]
    own = roll.loss_mask.bool()
    assert (logp.detach()[own] - roll.sampling_logp[own]).abs().max() < 1e-4
    algo = algorithms.get("grpo").bind(group_size=4, max_new_tokens=400, max_prompt_len=64)
    gids = torch.arange(2).repeat_interleave(4)
    adv = algo.advantages(torch.tensor([1.0, 0, 0, 1, 0, 1, 0, 0]), gids)
    loss, _ = algo.policy_loss(logp, logp.detach(), adv, roll.model_mask, gids)
    (grad,) = torch.autograd.grad(loss, logp)
    assert (grad[injected] == 0).all() and (grad[own] != 0).any()


def test_a_retriever_that_is_down_fails_the_run_with_the_reason(search_base, openbook, tmp_path):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = [x for x in search_settings(openbook) if "retriever.corpus" not in x]
    log = tmp_path / "train.log"
    proc = rlvr_train(log, *run_overrides(search_base, openbook, tmp_path / "run", "train.steps=2",
                                          "rollout.prompts_per_step=2", "rollout.group_size=2", *settings,
                                          f"rollout.episode.retriever.url=http://127.0.0.1:{port}",
                                          "rollout.episode.retriever.timeout_s=2"))  # fmt: skip
    assert proc.wait(timeout=300) != 0
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status["state"] == "failed" and "RetrieverError" in status["reason"], status
    assert f"127.0.0.1:{port}" in status["reason"]
