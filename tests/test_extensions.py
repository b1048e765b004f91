"""A suite of your own, as the README's recipe says: one file outside the package
(tests/ext_suite_example.py: `register_suite(Suite(...))`), named in the matrix's `modules:`,
is planned, written, trained on and evaluated like a shipped suite, each job run by the command
the plan gives it (`rlvr <stage> --config <its run config>`)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from snakemake.utils import validate

from rlvr.plan import Plan, PlanError

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "tests" / "ext_suite_example.py"
BIN = Path(sys.executable).parent


def matrix(base: str = "Qwen/none", **changes) -> dict:
    config = {
        "experiment": "ext_suite", "suites": {"doubling_example": {"params": {"n_train": 32, "n_test": 8}}},
        "models": {"base": {"name_or_path": base}}, "algorithms": {"grpo": {}}, "seeds": [0],
        "modules": [str(EXAMPLE)],
        "run": {
            "rollout": {"prompts_per_step": 4, "group_size": 4, "max_new_tokens": 24},
            "train": {"steps": 2, "threads": 1}, "eval": {"k": 2, "limit": 8},
            "checkpoint": {"every": 0, "export_hf": False}, "logging": {"wandb": False, "progress": False},
        },
    } | changes  # fmt: skip
    validate(config, str(ROOT / "workflows/schema/config.schema.yaml"))
    return config


def test_a_suite_of_your_own_plans_and_planning_imports_no_torch(tmp_path):
    path = tmp_path / "matrix.yaml"
    path.write_text(yaml.safe_dump(matrix()))
    cmd = [sys.executable, "-X", "importtime", "-m", "snakemake", "-n", "-p", "all", "--configfile", str(path)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PATH": f"{BIN}:/usr/bin:/bin"})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    assert "evals.suites" in imported and "torch" not in imported
    assert "rlvr data --suite doubling_example" in done.stdout and f"--modules {EXAMPLE}" in done.stdout

    with pytest.raises(PlanError, match=r"suites: \['doubling_example'\] are not suites"):
        Plan(matrix(modules=[]))  # without the module the name is a typo, caught at planning


def run(command: str, cwd: Path) -> None:
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, shell=True, cwd=cwd, capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, f"{command}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"


def test_a_suite_of_your_own_is_written_trained_and_evaluated_by_the_plans_commands(sft_base, tmp_path):
    plan = Plan(matrix(base=str(sft_base)))
    data = plan.job("data", suite="doubling_example")
    run(data.command, tmp_path)
    records = [json.loads(line) for line in (tmp_path / data.outputs[1]).read_text().splitlines()]
    assert len(records) == 8 and all(r["prompt"] == f"Q: 2*{r['metadata']['operand']}=" for r in records)
    assert all(int(r["answer"]) == 2 * r["metadata"]["operand"] and r["metadata"]["operand"] % 2 == 0 for r in records)

    for job in (plan.job("train", suite="doubling_example", model="base", algo="grpo", seed=0),
                plan.job("eval", suite="doubling_example", model="base", runname="grpo/seed0", evalsuite="doubling_example")):
        (tmp_path / job.config_path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / job.config_path).write_text(job.config_text)  # what the run_config rule writes
        run(job.command, tmp_path)
    rdir = tmp_path / plan.paths.run_dir("doubling_example", "base", "grpo", 0)
    assert json.loads((rdir / "status.json").read_text())["state"] == "completed"
    rows = [json.loads(line) for line in (rdir / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(0 <= r["rollout/reward_mean"] <= 1 for r in rows)
    result = json.loads((rdir / "eval" / "doubling_example.json").read_text())
    # every test record, scored by the math template (the suite ships no task YAML of its own)
    assert result["suite"] == "doubling_example" and result["n"] == 8 and result["data"].endswith("doubling_example/test.jsonl")
    assert 0 <= result["metrics"]["pass@1"] <= 1


def test_sft_swapping_its_model_in_keeps_the_plans_files(math_data, tmp_path):
    """The plan writes a base's run config and its evaluations' configs into the base directory
    before the base is trained; SFT's atomic swap of the directory keeps them, mtimes included
    (else the next `make run` would rewrite them and retrain every base)."""
    from rlvr.config import load_config
    from rlvr.sft import sft

    base = tmp_path / "base"
    (base / "eval").mkdir(parents=True)
    (base / "config.yaml").write_text("planned: run config\n")
    (base / "eval" / "math.yaml").write_text("planned: eval config\n")
    stamps = {p: p.stat().st_mtime_ns for p in (base / "config.yaml", base / "eval" / "math.yaml")}
    cfg = load_config(None, ["model.family=qwen2", f"data.train={math_data}/train.jsonl", f"output_dir={base}",
                             "sft.max_steps=2", "sft.eval_every=2", "sft.eval_prompts=4", "logging.progress=false"])
    sft(cfg)
    assert (base / "sft.json").is_file() and (base / "config.json").is_file()  # the trained base
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert (base / "eval" / "math.yaml").read_text() == "planned: eval config\n"
