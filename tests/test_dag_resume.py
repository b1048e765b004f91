"""A DAG whose train job is SIGKILLed mid-run (a node lost, an OOM kill, Ctrl-C twice) finishes on
the next `make run` with nothing redone that was complete: the stale Snakemake lock is removed
(workflows/scripts/unlock_stale.sh), the data and the SFT base stay as they were, and the train
job resumes from its newest checkpoint instead of starting over."""

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
EXP = "ci_resume"
pytestmark = pytest.mark.slow


def make_run(configfile: Path, log: Path) -> subprocess.Popen:
    """`make run CONFIG=...`, as the README says."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    cmd = ["make", "run", f"CONFIG={configfile}", "CORES=2"]
    with open(log, "ab") as f:  # its own session: the kill takes snakemake and every job with it
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)


def test_a_killed_dag_finishes_on_the_next_run_without_redoing_finished_jobs(tmp_path):
    config = yaml.safe_load((ROOT / "config" / "ci_slurm.yaml").read_text())
    config["experiment"], config["results"] = EXP, str(tmp_path / "results")
    config["run"]["train"]["steps"] = 12
    configfile = tmp_path / "config.yaml"
    configfile.write_text(yaml.safe_dump(config))
    dirs = [ROOT / d / EXP for d in ("runs", "data", "logs")]
    for d in dirs:
        shutil.rmtree(d, ignore_errors=True)
    run = ROOT / "runs" / EXP / "math" / "qwen2" / "grpo" / "seed0"
    log = tmp_path / "snakemake.log"
    try:
        first = make_run(configfile, log)
        deadline = time.time() + 600
        rows = run / "metrics.jsonl"
        while time.time() < deadline and first.poll() is None:
            if rows.exists() and len(rows.read_text().splitlines()) >= 3:  # past the step-2 checkpoint
                break
            time.sleep(0.02)
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
        assert json.loads((run / "status.json").read_text())["state"] == "running", log.read_text()[-3000:]
        assert not (tmp_path / "results" / "leaderboard.md").exists()
        finished = [ROOT / "data" / EXP / "math" / "train.jsonl", ROOT / "runs" / EXP / "math" / "qwen2" / "base" / "sft.json"]
        stamps = {p: p.stat().st_mtime_ns for p in finished}

        second = make_run(configfile, log)
        assert second.wait(timeout=900) == 0, log.read_text()[-5000:]
        assert {p: p.stat().st_mtime_ns for p in finished} == stamps  # not redone
        status = json.loads((run / "status.json").read_text())
        assert status["state"] == "completed" and status["step"] == 12
        train_log = (ROOT / "logs" / EXP / "train" / "math" / "qwen2" / "grpo" / "seed0.log").read_text()
        assert "resumed from" in train_log and "step_00000" in train_log  # from a checkpoint, not step 0
        assert [json.loads(r)["step"] for r in (run / "metrics.jsonl").read_text().splitlines()] == list(range(1, 13))
        assert (tmp_path / "results" / "leaderboard.md").exists()
    finally:
        for d in dirs:
            shutil.rmtree(d, ignore_errors=True)
