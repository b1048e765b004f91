"""A newcomer's first hour (issue 14): defaults that hold on any CPU, and bad inputs that fail in
one line before any model loads. Fast: nothing here trains."""

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import yaml

import rlvr.train
from rlvr.cli import main
from rlvr.config import load_config
from rlvr.data import write_suite
from rlvr.device import Device, resolve_precision, this_device
from rlvr.models import ModelNotFoundError, build_tiny_model, check_model_source, save_checkpoint
from rlvr.plan import Paths

ROOT = Path(__file__).resolve().parents[1]
AVX2 = Device("cpu", "AMD EPYC (test)", "AVX2", (), False)
AVX512_BF16 = Device("cpu", "Intel Xeon (test)", "AVX512", ("avx512_bf16", "amx_bf16"), True)


# ---- 1. precision: auto ------------------------------------------------------------------------
def test_auto_is_bf16_only_where_the_cpu_computes_it_natively():
    assert resolve_precision("sft.precision", "auto", AVX2).used == "fp32"
    p = resolve_precision("sft.precision", "auto", AVX512_BF16)
    assert p.used == "bf16" and "avx512_bf16" in p.why
    assert resolve_precision("train.precision", "fp32", AVX512_BF16).used == "fp32"


def test_explicit_bf16_without_native_support_runs_with_one_warning():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        p = resolve_precision("sft.precision", "bf16", AVX2)
        resolve_precision("sft.precision", "bf16", AVX512_BF16)  # native: no warning
    assert p.used == "bf16"
    assert len(caught) == 1 and "50x slower" in str(caught[0].message)
    assert "sft.precision=auto" in str(caught[0].message)


def test_this_machine_is_described_from_its_own_flags():
    d = this_device()
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    assert d.native_bf16 == any(f in flags.split() for f in ("avx512_bf16", "amx_bf16", "bf16"))


def test_the_default_dag_warm_starts_in_auto_and_trains_in_fp32():
    cfg = yaml.safe_load((ROOT / "config" / "default.yaml").read_text())
    assert "precision" not in cfg["run"]["sft"]  # the SftConfig default, auto, applies
    run = load_config(None, [])
    assert run.sft.precision == "auto" and run.train.precision == "fp32"


# ---- 3. bad inputs: one line, before any model loads ---------------------------------------------
@pytest.fixture
def no_model_loads(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the bad input was reported")

    monkeypatch.setattr(rlvr.train, "load_model_and_tokenizer", refuse)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    model, tok = build_tiny_model("qwen2")
    save_checkpoint(model, tok, root / "ckpt")
    write_suite("math", root / "data", seed=0, n_train=32, n_test=8)
    return root


def one_line_error(capsys, *argv) -> str:
    assert main(list(argv)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def train_args(tiny: Path, *extra: str) -> list[str]:
    return ["train", f"model.name_or_path={tiny / 'ckpt'}", f"data.train={tiny / 'data' / 'train.jsonl'}",
            f"output_dir={tiny / 'run'}", "logging.wandb=false", *extra]


@pytest.mark.parametrize("algo", ["grpo", "dr_grpo", "dapo", "wapo"])
def test_group_size_one_with_a_group_relative_algorithm(capsys, tiny, no_model_loads, algo):
    err = one_line_error(capsys, *train_args(tiny, f"algorithm.name={algo}", "rollout.group_size=1"))
    assert f"algorithm '{algo}'" in err and "rollout.group_size=1" in err


def _no_vllm() -> bool:
    from rlvr.device import vllm_platform

    return vllm_platform() is None


@pytest.mark.skipif(not _no_vllm(), reason="checks the refusal where vLLM cannot run")
@pytest.mark.parametrize("field", ["rollout.engine", "eval.backend"])
def test_vllm_where_it_cannot_run(capsys, tiny, no_model_loads, field):
    err = one_line_error(capsys, *train_args(tiny, f"{field}=vllm"))
    assert f"{field}=vllm: vLLM cannot run here" in err and "make test-vllm" in err
    if field == "eval.backend":
        err = one_line_error(capsys, "eval", f"eval.checkpoint={tiny / 'ckpt'}", "eval.backend=vllm",
                             f"data.test={tiny / 'data' / 'test.jsonl'}")
        assert "eval.backend=vllm: vLLM cannot run here" in err


@pytest.mark.parametrize(
    "name, says",
    [
        ("runs/x", "tried as a local path"),  # shaped like a hub id: both routes named
        ("/nonexistent", "no such local checkpoint directory"),
        ("./runs/x", "no such local checkpoint directory"),
    ],
)
def test_a_model_that_does_not_exist(capsys, tiny, no_model_loads, monkeypatch, name, says):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tiny)
    err = one_line_error(capsys, *train_args(tiny, f"model.name_or_path={name}"))
    assert repr(name) in err and says in err
    if name == "runs/x":
        assert "hub id" in err and "HF_HUB_OFFLINE=1" in err


def test_a_directory_that_is_not_a_checkpoint(tiny):
    with pytest.raises(ModelNotFoundError, match="has no config.json"):
        check_model_source(tiny / "data")
    assert check_model_source(tiny / "ckpt") == "local"


def test_missing_training_data(capsys, tiny, no_model_loads):
    err = one_line_error(capsys, *train_args(tiny, "data.train=/nonexistent.jsonl"))
    assert err.endswith("`rlvr data --suite NAME --out DIR`)") and "data.train" in err


def test_an_outside_algorithm_with_a_bad_hook_fails_before_any_model(capsys, tiny, no_model_loads, tmp_path):
    bad = tmp_path / "bad_algo.py"
    bad.write_text("import algorithms\n\n\n@algorithms.register('bad_hook')\nclass Bad(algorithms.Algorithm):\n"
                   "    def advantages(self, rewards):\n        return rewards\n")
    err = one_line_error(capsys, *train_args(tiny, f"algorithm.modules=[{bad}]", "algorithm.name=bad_hook"))
    assert "advantages(self, rewards)" in err and "expected advantages(self, rewards, group_ids)" in err


def test_the_readme_lm_eval_command_works_where_make_run_writes_the_data(tiny, tmp_path):
    """README: `lm_eval --include_path evals/tasks --tasks rlvr_math --model hf --model_args
    pretrained=CKPT` from the repo root after `make run`. The task template must read the test
    file where the DAG's data rule writes it for the default experiment."""
    experiment = yaml.safe_load((ROOT / "config" / "default.yaml").read_text())["experiment"]
    dag_path = f"data/{experiment}/math/test.jsonl"
    assert Paths(experiment).data("math", "test") == dag_path  # rlvr/plan.py: where the data jobs write
    template = yaml.safe_load((ROOT / "evals" / "tasks" / "math.yaml").read_text().replace("!function", ""))
    assert template["dataset_kwargs"]["data_files"]["test"] == dag_path
    write_suite("math", tmp_path / Path(dag_path).parent, seed=0, n_train=0, n_test=8)
    lm_eval = Path(sys.executable).with_name("lm_eval")
    cmd = [str(lm_eval), "--include_path", str(ROOT / "evals" / "tasks"), "--tasks", "rlvr_math",
           "--model", "hf", "--model_args", f"pretrained={tiny / 'ckpt'}", "--limit", "4"]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    done = subprocess.run(cmd, cwd=tmp_path, env={**env, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "rlvr_math" in done.stdout and "acc" in done.stdout


@pytest.mark.parametrize("field", ["train.forward", "rollout.engine"])
def test_native_with_lora_is_refused_before_the_model_loads(capsys, tiny, no_model_loads, field):
    err = one_line_error(capsys, *train_args(tiny, f"{field}=native", "model.lora.enabled=true"))
    assert f"{field}=native cannot run a model with LoRA adapters" in err


def test_search_episodes_without_a_retriever_or_its_corpus(capsys, tiny, no_model_loads):
    err = one_line_error(capsys, *train_args(tiny, "rollout.episode.mode=search"))
    assert "exactly one of rollout.episode.retriever.corpus" in err and ".url" in err
    err = one_line_error(capsys, *train_args(tiny, "rollout.episode.mode=search",
                                             f"rollout.episode.retriever.corpus={tiny / 'nope.jsonl'}"))
    assert "rollout.episode.retriever.corpus: no such file" in err
