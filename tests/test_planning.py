"""Planning-time errors (`snakemake -n`): a config typo fails in one line naming what is wrong and
what is allowed, before any job runs, and planning imports no torch. (The paper config's plan is
checked in test_search_suites.py.)"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rlvr.algorithm_names import registered_names

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def plan(config: dict, tmp_path: Path, *python_flags: str) -> subprocess.CompletedProcess:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    cmd = [sys.executable, *python_flags, "-m", "snakemake", "-n", "all", "--configfile", str(path)]
    env = {**os.environ, "PATH": f"{BIN}:/usr/bin:/bin"}
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)


def default_config() -> dict:
    return yaml.safe_load((ROOT / "config" / "default.yaml").read_text())


def with_(**changes) -> dict:
    return {**default_config(), **changes}


@pytest.mark.parametrize(("config", "says"), [
    (with_(algorithms={"grpo": {}, "wapoo": {}}),
     r"algorithms.wapoo: 'wapoo' is not a registered algorithm \(registered: \[.*'wapo'.*\]; one of your own: `modules:`\)"),
    (with_(algorithms={"grpo": {}, "fast": {"name": "gpro", "run": {"train": {"lr": 0.001}}}}),
     r"algorithms.fast.name: 'gpro' is not a registered algorithm \(registered: \[.*'grpo'.*\]"),
    (with_(suites={"math": {}, "mathh": {}}), r"suites: \['mathh'\] are not suites \(suites: \[.*'math'.*\]\)"),
    (with_(suites={"math": {"eval": ["gsm8k", "gsm8kk"]}}),
     r"suites.math.eval: \['gsm8kk'\] are not suites \(suites: \[.*'gsm8k'.*\]\)"),
    (with_(seeds=[0, 1, 0]), r"seeds: \[0\] listed more than once in \[0, 1, 0\] \(.*list distinct seeds\)"),
])
def test_a_typo_fails_planning_in_one_line(config, says, tmp_path):
    import re

    done = plan(config, tmp_path)
    out = done.stdout + done.stderr
    assert done.returncode != 0, out[-2000:]
    assert any(re.match(says, line) for line in out.splitlines()), out[-2000:]  # the line itself
    assert "rlvr train" not in out and "Job stats" not in out  # nothing planned, nothing run


def test_an_algorithm_of_a_config_module_plans_and_planning_imports_no_torch(tmp_path):
    config = with_(modules=["tests/ext_algo_example.py"], algorithms={"grpo": {}, "median": {"name": "median_baseline_example"}})
    done = plan(config, tmp_path, "-X", "importtime")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    assert "rlvr.algorithm_names" in imported and "torch" not in imported and "algorithms" not in imported


def test_names_read_from_source_are_the_registrys(tmp_path):
    """registered_names (no import) against algorithms.available() once the modules are imported,
    in a fresh process (other tests register names of their own)."""
    modules = ["tests/ext_algo_example.py", "tests/nan_algo.py"]
    script = "import algorithms, json, sys; algorithms.import_modules(sys.argv[1:]); print(json.dumps(algorithms.available()))"
    for mods in ([], modules):
        done = subprocess.run([sys.executable, "-c", script, *mods], cwd=ROOT, capture_output=True, text=True, check=True)
        assert registered_names(mods) == set(json.loads(done.stdout)), mods
    assert {"nan_loss_test", "nan_grad_test", "median_baseline_example"} <= registered_names(modules)


def test_a_module_whose_names_only_running_tells_is_not_checked(tmp_path, monkeypatch):
    computed = tmp_path / "computed.py"
    computed.write_text("import algorithms\nfor n in ('a', 'b'):\n    algorithms.register(f'x_{n}')(type(n, (algorithms.Algorithm,), {}))\n")
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "algo.py").write_text("import algorithms\n\n@algorithms.register('dotted_one')\nclass A(algorithms.Algorithm):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert registered_names([str(computed)]) is None
    assert registered_names([str(tmp_path / "missing.py")]) is None  # the job names the import error
    assert "dotted_one" in registered_names(["pkg.algo"])


def test_rlvr_plan_lists_every_job_and_writes_the_configs_its_commands_read(tmp_path):
    """`rlvr plan MATRIX --write`: every job's command, and the run config it reads written where
    it reads it, so a job runs by hand without Snakemake; a schema error is one line."""
    from rlvr.config import dump_config, load_config

    matrix = tmp_path / "matrix.yaml"
    matrix.write_text(yaml.safe_dump(default_config()))
    done = subprocess.run([str(BIN / "rlvr"), "plan", str(matrix), "--stage", "train", "--write"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, check=True)
    commands = [line.split(None, 1)[1] for line in done.stdout.splitlines()]
    cfg = default_config()
    assert len(commands) == len(cfg["suites"]) * len(cfg["models"]) * len(cfg["algorithms"]) * len(cfg["seeds"])
    first = commands[0].split()
    assert first[:3] == ["rlvr", "train", "--config"]
    written = load_config(tmp_path / first[3])
    assert written.output_dir == str(Path(first[3]).parent) and written.train.steps == cfg["run"]["train"]["steps"]
    assert written.algorithm.name == Path(first[3]).parts[-3] and written.seed == int(Path(first[3]).parts[-2][4:])
    assert dump_config(written) == (tmp_path / first[3]).read_text()  # the resolved config, whole

    (tmp_path / "typo.yaml").write_text(yaml.safe_dump(with_(sedes=[0])))
    bad = subprocess.run([str(BIN / "rlvr"), "plan", "typo.yaml"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip() == (
        "rlvr plan: error: typo.yaml: Additional properties are not allowed ('sedes' was unexpected)")


def test_the_seed_and_lag_matrices_plan_in_the_seeds_regime():
    """config/seed.yaml (the seed's runs, field by field) and config/lag.yaml (every algorithm at
    staleness 0, 1 and 4) plan; their train jobs carry the lag, the mini-batches and π_old."""
    from rlvr.plan import load_matrix

    def train_configs(name: str) -> dict:
        jobs = load_matrix(ROOT / "config" / name).jobs.values()
        return {"/".join(j.wildcards.values()): j.config for j in jobs if j.stage == "train"}

    seed = train_configs("seed.yaml")
    hotpot = seed["hotpotqa_search/smollm3-3b/wapo/0"]
    assert (hotpot.rollout.staleness, hotpot.rollout.overlap, hotpot.train.old_logp) == (1, True, "behaviour")
    assert (hotpot.rollout.prompts_per_step * hotpot.rollout.group_size, hotpot.train.mini_batches) == (256, 4)
    assert hotpot.algorithm.hparams == {"clip_ratio_high": 9.0} and hotpot.train.lr == 1e-5
    gsm8k = seed["gsm8k/qwen3-4b/wapo/0"]
    assert (gsm8k.rollout.group_size, gsm8k.train.mini_batches, gsm8k.train.grad_clip) == (4, 1, 0.01)
    lag = list(train_configs("lag.yaml").values())
    trained = {(c.algorithm.name, c.rollout.staleness) for c in lag}
    assert trained == {(name, k) for name in registered_names() for k in (0, 1, 4)}
    assert all(c.train.mini_batches == 4 for c in lag)
