"""The slurm profile on a real single-node Slurm: `snakemake --profile slurm all` as a user types it,
on the smallest matrix (config/ci_slurm.yaml), every rule submitted through sbatch."""

import base64
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "tests" / "slurm"
pytestmark = [pytest.mark.slurm, pytest.mark.slow]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("bringing up Slurm needs root (Debian packages and daemons)")
    state = tmp_path_factory.mktemp("slurm")
    try:
        subprocess.run(
            ["timeout", "-s", "KILL", "420", "bash", SCRIPTS / "start.sh", state], check=True
        )
        yield state
    finally:
        subprocess.run(["bash", SCRIPTS / "stop.sh", state], check=False)


def test_slurm_profile_runs_the_minimal_matrix(slurm):
    for path in (
        "runs/ci_slurm",
        "data/ci_slurm",
        "logs/ci_slurm",
        ".tmp/results_ci_slurm",
        ".snakemake/slurm_logs",
    ):
        shutil.rmtree(ROOT / path, ignore_errors=True)
    env = {**os.environ, "PATH": f"{ROOT / '.venv' / 'bin'}:{os.environ['PATH']}"}
    # no slurmdbd here, so job status comes from squeue (MinJobAge=300 in slurm.conf)
    cmd = [
        "timeout",
        "-s",
        "KILL",
        "900",
        "snakemake",
        "--profile",
        "slurm",
        "all",
        "--configfile",
        "config/ci_slurm.yaml",
        "--slurm-status-command",
        "squeue",
        "--slurm-init-seconds-before-status-checks",
        "5",
        "--slurm-keep-successful-logs",
    ]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    run = ROOT / "runs/ci_slurm/math/qwen2/grpo/seed0"
    assert json.loads((run / "status.json").read_text())["state"] == "completed"
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 3
    assert json.loads((run / "eval/math.json").read_text())["n"] == 8
    # the data-parallel job: torchrun inside the sbatch job, 2 ranks, rank 0 wrote one row a step
    ranks = ROOT / "runs/ci_slurm/math/qwen2/grpo_2ranks/seed0"
    status = json.loads((ranks / "status.json").read_text())
    assert status["state"] == "completed" and status["world_size"] == 2, status
    assert len((ranks / "metrics.jsonl").read_text().splitlines()) == 3
    assert "--standalone --nproc_per_node=2 -m rlvr train" in done.stdout + done.stderr
    # the seed's regime in an sbatch job: a rollout process beside the trainer, one update behind
    lag = [json.loads(line) for line in (ROOT / "runs/ci_slurm/math/qwen2/wapo_lag/seed0/metrics.jsonl").read_text().splitlines()]
    assert [r["rollout/staleness"] for r in lag] == [0, 1, 1], lag
    assert all("actor/ratio_max" in r for r in lag)
    assert (ROOT / "runs/ci_slurm/math/qwen2/base/eval/math.json").exists()
    assert "grpo" in (ROOT / ".tmp/results_ci_slurm/leaderboard.md").read_text()
    # every rule went through sbatch: the plugin keeps one log per submitted job (rule_<name>/...)
    slurm_logs = list((ROOT / ".snakemake/slurm_logs").rglob("*.log"))
    rules = {part for p in slurm_logs for part in p.parts if part.startswith("rule_")}
    assert rules >= {"rule_data", "rule_base", "rule_train", "rule_evaluate", "rule_curve", "rule_aggregate"}, rules
    # the learning curve of grpo (checkpoints at steps 1, 2 and final/ at 3) and its fit
    curve = json.loads((run / "curve/math.json").read_text())
    assert [p["step"] for p in curve["points"]] == [1, 2, 3]
    assert "| grpo | 1 |" in (ROOT / ".tmp/results_ci_slurm/scaling.md").read_text()
    # Snakemake's own report: one HTML page that embeds every figure the aggregate wrote
    report = ROOT / ".tmp/results_ci_slurm/report.html"
    made = subprocess.run(["snakemake", "--report", str(report), "--configfile", "config/ci_slurm.yaml"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert made.returncode == 0, made.stdout[-2000:] + made.stderr[-3000:]
    html = report.read_text()
    figures = sorted((ROOT / ".tmp/results_ci_slurm/figures").glob("*.png"))
    assert {f.name for f in figures} >= {"math_entropy.png", "performance_profile.png", "math_scaling.png"}
    for figure in figures:
        assert base64.b64encode(figure.read_bytes()).decode() in html, figure.name
