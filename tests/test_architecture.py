"""The architecture contract in pyproject.toml ([tool.importlinter]) holds, and would catch an
upward import: checked here so `make test` (and CI) enforce it, not only `make lint`."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"]


def lint(cwd: Path) -> subprocess.CompletedProcess:
    env = {"PYTHONPATH": str(cwd), "PATH": "/usr/bin:/bin"}
    return subprocess.run(LINT + ["--no-cache"], cwd=cwd, env=env, capture_output=True, text=True)


def test_the_import_contracts_hold():
    out = lint(ROOT)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "0 broken" in out.stdout


def test_an_upward_import_breaks_the_contract(tmp_path):
    for package in ("rlvr", "algorithms", "evals"):
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    with open(tmp_path / "rlvr" / "config.py", "a") as f:  # the bottom layer importing the loop
        f.write("\nimport rlvr.train  # noqa: E402, F401\n")
    out = lint(tmp_path)
    assert out.returncode != 0
    assert "rlvr.config is not allowed to import rlvr.train" in out.stdout
    assert "No cycles are allowed in rlvr." in out.stdout


@pytest.mark.parametrize(("module", "imports", "says"), [
    ("report/stability.py", "rlvr.update", "rlvr.report is not allowed to import rlvr.update:"),  # forbidden
    ("update/step.py", "rlvr.report.runs", "rlvr.update is not allowed to import rlvr.report:"),  # a layer up
    ("train.py", "rlvr.report.aggregate", "rlvr.train is not allowed to import rlvr.report:"),  # train | report
])
def test_an_import_between_the_report_and_the_training_side_breaks_the_contract(tmp_path, module, imports, says):
    for package in ("rlvr", "algorithms", "evals"):
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    with open(tmp_path / "rlvr" / module, "a") as f:
        f.write(f"\nimport {imports}  # noqa: E402, F401\n")
    out = lint(tmp_path)
    assert out.returncode != 0
    assert says in out.stdout, out.stdout[-3000:]
