"""Shared fixtures: offline environment, a generated math suite, and one SFT-warm-started tiny base."""

import os
from pathlib import Path

import pytest

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
