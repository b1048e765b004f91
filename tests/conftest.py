"""Shared fixtures: offline environment, a generated math suite, and one SFT-warm-started tiny base."""

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
RANK_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")

# Tests never reach a hub and never start a distributed group the eval code could inherit.
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault(
    "TORCH_EXTENSIONS_DIR", str(Path(__file__).resolve().parents[1] / ".cache" / "torch_extensions")
)


@pytest.fixture(scope="session")
def math_data(tmp_path_factory) -> Path:
    from rlvr.data import write_suite

    out = tmp_path_factory.mktemp("data") / "math"
    write_suite("math", out, seed=0)
    return out


@pytest.fixture(scope="session")
def sft_base(tmp_path_factory, math_data) -> Path:
    """A tiny Qwen2 warm-started to ~30% sampled accuracy (the DAG's SFT rule, ~75 s on 2 cores)."""
    from rlvr.config import load_config
    from rlvr.sft import sft

    out = tmp_path_factory.mktemp("base") / "qwen2"
    cfg = load_config(
        None,
        [
            "model.family=qwen2",
            f"data.train={math_data}/train.jsonl",
            f"output_dir={out}",
            "sft.max_steps=2000",
            "sft.precision=fp32",  # the tests' expected numbers were measured on fp32 bases
            "logging.progress=false",
        ],
    )
    summary = sft(cfg)
    assert summary["reached_target"], summary
    return out


def run_overrides(base: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return [
        f"model.name_or_path={base}",
        f"data.train={data}/train.jsonl",
        f"data.test={data}/test.jsonl",
        f"output_dir={out}",
        "logging.wandb=false",
        "logging.progress=false",
        *extra,
    ]


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment for a child `rlvr train`: no rendezvous of its own (pytest may
    run inside one), the tests' modules importable, one OpenMP thread per process."""
    env = {k: v for k, v in os.environ.items() if k not in RANK_VARIABLES}
    env.update(PYTHONPATH=f"{ROOT}{os.pathsep}{TESTS}", OMP_NUM_THREADS="1", **extra)
    return env


def torchrun(n: int, *args: str) -> list[str]:
    """`torchrun --standalone --nproc_per_node=n ARGS` with this interpreter."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}", *args]


# ---- search episodes: the openbook suite and a base that has seen a few hundred worked episodes

@pytest.fixture(scope="session")
def openbook(tmp_path_factory):
    from rlvr.data import write_suite

    out = tmp_path_factory.mktemp("openbook")
    write_suite("openbook", out, seed=0, n_people=400)
    return out


def search_settings(data):
    return [
        "data.suite=openbook", "rollout.episode.mode=search", f"rollout.episode.retriever.corpus={data}/corpus.jsonl",
        "rollout.max_new_tokens=400", "rollout.episode.max_turn_tokens=32", "rollout.episode.max_turns=4",
        "train.threads=1",
    ]  # fmt: skip


@pytest.fixture(scope="session")
def search_base(tmp_path_factory, openbook):
    """A tiny Qwen2 that has seen a few hundred worked episodes: it searches, not yet well."""
    from rlvr.config import load_config
    from rlvr.sft import sft

    out = tmp_path_factory.mktemp("search_base") / "qwen2"
    cfg = load_config(None, [
        "model.family=qwen2", "model.tiny.max_positions=512", f"data.train={openbook}/train.jsonl",
        f"output_dir={out}", "sft.max_steps=200", "sft.batch_size=16", "sft.eval_every=200", "sft.eval_prompts=16",
        "logging.progress=false", *search_settings(openbook),
    ])  # fmt: skip
    sft(cfg)
    return out
