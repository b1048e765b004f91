"""A table of your own, as the README's recipe says: one file outside the package
(tests/ext_report_example.py: `register_report(Report(...))`), loaded by `rlvr aggregate --modules`
or the matrix's `modules:`, is written beside the shipped reports and listed by the aggregate rule.
Both run in a process of their own: registering here would add the toy to this process's REPORTS."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_aggregate import build_tree

from rlvr.report import REPORTS, Options, Output, Report, register_report

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = "tests/ext_report_example.py"
BIN = Path(sys.executable).parent
ENV = {**os.environ, "PATH": f"{BIN}:/usr/bin:/bin"}


def test_rlvr_aggregate_writes_a_report_of_your_own(tmp_path):
    runs, out = build_tree(tmp_path), tmp_path / "results"
    cmd = [sys.executable, "-m", "rlvr", "aggregate", "--runs", str(runs), "--experiment", "exp",
           "--out", str(out), "--reps", "50", "--modules", EXAMPLE]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=ENV, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    # last logged reward of each finished run (test_aggregate's tree): 0.6 + 0.1 × seed after 6
    # steps; math/qwen2/grpo/seed1 collapsed at step 4 at 0.1; math/gpt2/wapo/seed1 is running.
    #   math grpo      (0.6 + 0.7 + 0.6 + 0.1) / 4 = 0.5      math wapo  (0.6 + 0.6 + 0.7) / 3
    #   multihop grpo  (0.6 + 0.7 + 0.6 + 0.7) / 4 = 0.65     multihop wapo: the same
    assert (out / "last_reward.csv").read_text() == (
        "suite,algorithm,runs,last_reward\n"
        "math,grpo,4,0.5\nmath,wapo,3,0.633333\nmultihop,grpo,4,0.65\nmultihop,wapo,4,0.65\n"
    )
    text = (out / "last_reward.md").read_text()
    assert text.startswith("# Last-step reward — experiment `exp`") and "| math | wapo | 3 | 0.633 |" in text
    assert (out / "leaderboard.md").is_file() and (out / "stability.csv").is_file()  # beside the shipped ones


def dry_run(tmp_path: Path, modules: list[str]) -> str:
    matrix = {
        "experiment": "ext_report", "suites": {"math": {}}, "models": {"base": {"name_or_path": "Qwen/none"}},
        "algorithms": {"grpo": {}}, "seeds": [0], "modules": modules,
    }
    path = tmp_path / "matrix.yaml"
    path.write_text(yaml.safe_dump(matrix))
    cmd = [sys.executable, "-m", "snakemake", "-n", "-p", "aggregate", "--configfile", str(path)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=ENV, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done.stdout


def test_the_aggregate_rule_lists_its_files_and_passes_the_module_on(tmp_path):
    planned = dry_run(tmp_path, [EXAMPLE])
    assert "results/ext_report/last_reward.md" in planned and "results/ext_report/last_reward.csv" in planned
    assert f"--modules {EXAMPLE}" in planned and "results/ext_report/leaderboard.md" in planned
    without = dry_run(tmp_path, [])
    assert "last_reward" not in without and "--modules" not in without


def test_a_report_taking_a_name_or_a_file_of_another_is_rejected():
    before = list(REPORTS)
    with pytest.raises(ValueError, match="'leaderboard' is already registered by rlvr.report.leaderboard"):
        register_report(Report("leaderboard", "my_module", {"csv": Output("mine.csv", "Mine")}))
    with pytest.raises(ValueError, match=r"would write \['stability.md'\], which report 'stability' writes"):
        register_report(Report("mine", "my_module", {"markdown": Output("stability.md", "Mine")}))
    with pytest.raises(ValueError, match="identifier other than 'manifest'"):
        register_report(Report("manifest", "my_module", {"csv": Output("mine.csv", "Mine")}))
    assert REPORTS == before


def test_a_file_the_report_does_not_declare_is_an_error(monkeypatch):
    module = type(sys)("undeclared_report")
    module.write = lambda runs, header, options: {"markdown": "# fine", ("figure", "math"): b"png"}
    monkeypatch.setitem(sys.modules, "undeclared_report", module)
    report = Report("undeclared", "undeclared_report", {"markdown": Output("u.md", "U")})
    with pytest.raises(KeyError, match=r"report 'undeclared' wrote \('figure', 'math'\), which it does not declare"):
        report.make([], None, Options())


def test_declaring_the_reports_imports_nothing_heavy():
    """The Snakefile reads REPORTS while planning: no pandas, matplotlib or torch for it."""
    script = "import sys, rlvr.report; print(sorted({'pandas', 'matplotlib', 'torch'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=ENV, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr
