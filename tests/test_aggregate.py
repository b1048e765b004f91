"""rlvr.report.aggregate on a hand-built runs tree: 2 suites × 2 families × (grpo, wapo, base) × 2 seeds.

Hand-chosen values (every run has 6 steps unless noted):
    entropy   grpo 1,1,1,.5,.5,.5 (final/initial 0.5); wapo 1,1,1,2,2,2 (2.0)
    reward    .1 .. .6 plus 0.1 × seed (peak .6 + .1s, final .5 + .1s)
    grad norm 1 .. 6 times (seed + 1) (max 6, 12)
    taxonomy  pos_peak .4, pos_valley .1, neg_peak .3, neg_valley .2; grad mass .25 each
    math/qwen2/grpo/seed1  collapsed at step 4 (entropy collapse): 4 steps, entropy 1,1,1,.1
                           (ratio .7), reward .2,.3,.4,.1, grad 1,1,1,10, pos_peak_frac .8
    math/gpt2/wapo/seed1   running: wild values everywhere, must be excluded
"""

import json
import shutil
import struct
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml

from rlvr.report import aggregate as agg
from rlvr.report import header as report_header
from rlvr.report.leaderboard import CHANCE_LABEL
from rlvr.report.runs import BASE_LABEL, TAXONOMY_BINS

SUITES, FAMILIES, ALGOS, SEEDS = ("math", "multihop"), ("gpt2", "qwen2"), ("grpo", "wapo"), (0, 1)
COMMAND = "rlvr aggregate --config config/test.yaml"
COLLAPSE = {"window": 3, "patience": 5, "entropy_low": 0.1, "entropy_high": 3.0}
# pass@1 per (suite, family, algorithm, seed); base has seed None. Other metrics derive from it.
PASS1 = {
    ("gpt2", "grpo"): (0.2, 0.4), ("gpt2", "wapo"): (0.5, 0.99),
    ("qwen2", "grpo"): (0.4, 0.6), ("qwen2", "wapo"): (0.7, 0.8),
    ("gpt2", "base"): (0.9,), ("qwen2", "base"): (0.1,),
}


def write_eval(run: Path, suite: str, pass1: float) -> None:
    metrics = {"pass@1": pass1, "avg@4": pass1 - 0.05, "pass@4": pass1 + 0.1}
    extra = {}
    if suite == "multihop":
        metrics = {"pass@1": pass1, "em": pass1, "f1": pass1 + 0.1}
        extra = {"chance": 0.25}
    data = {"suite": suite, "checkpoint": str(run / "final"), "metrics": metrics, "n": 8, "k": 4, **extra}
    (run / "eval").mkdir(parents=True, exist_ok=True)
    (run / "eval" / f"{suite}.json").write_text(json.dumps(data))


def metrics_rows(entropy, reward, grad, pos_peak=0.4) -> list[dict]:
    tax = {"pos_peak_frac": pos_peak, "pos_valley_frac": 0.1, "neg_peak_frac": 0.3, "neg_valley_frac": 0.2}
    tax |= {f"{b}_grad_mass": 0.25 for b in TAXONOMY_BINS}
    return [
        {"step": i + 1, "rollout/reward_mean": r, "actor/entropy": e, "actor/grad_norm": g,
         **{f"taxonomy/{k}": v for k, v in tax.items()}}
        for i, (e, r, g) in enumerate(zip(entropy, reward, grad, strict=True))
    ]


def write_run(root: Path, suite: str, family: str, algo: str, seed: int) -> None:
    run = root / suite / family / algo / f"seed{seed}"
    run.mkdir(parents=True)
    ent = [1, 1, 1] + ([0.5] * 3 if algo == "grpo" else [2] * 3)
    rows = metrics_rows(ent, [0.1 * i + 0.1 * seed for i in range(1, 7)], [i * (seed + 1) for i in range(1, 7)])
    status = {"state": "completed", "step": 6, "reason": None, "steps_run": 6}
    if (suite, family, algo, seed) == ("math", "qwen2", "grpo", 1):
        rows = metrics_rows([1, 1, 1, 0.1], [0.2, 0.3, 0.4, 0.1], [1, 1, 1, 10], pos_peak=0.8)
        reason = "entropy collapse: entropy 0.1 (initial 1), reward 0.1 (initial 0.3) for 5 steps"
        status = {"state": "collapsed", "step": 4, "reason": reason, "steps_run": 4}
    if (suite, family, algo, seed) == ("math", "gpt2", "wapo", 1):
        rows = metrics_rows([1, 50], [1.0, 1.0], [1000, 1000])
        status = {"state": "running", "step": 2, "reason": None}
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run / "status.json").write_text(json.dumps(status))
    (run / "config.yaml").write_text(yaml.safe_dump({"seed": seed, "collapse": COLLAPSE}, sort_keys=False))
    if not (suite == "multihop" and family == "gpt2" and (algo == "wapo" or seed == 0)):
        write_eval(run, suite, PASS1[family, algo][seed])


def build_tree(root: Path) -> Path:
    exp = root / "runs" / "exp"
    for suite in SUITES:
        for family in FAMILIES:
            for algo in ALGOS:
                for seed in SEEDS:
                    write_run(exp, suite, family, algo, seed)
            base = exp / suite / family / "base"
            write_eval(base, suite, PASS1[family, "base"][0])
            (base / "sft.json").write_text(json.dumps({"target_accuracy": 0.3, "reached_accuracy": 0.31, "steps": 400}))
    return root / "runs"


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("agg")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(report_header, "git_commit", lambda **_: "abc1234")
        written = agg.aggregate(build_tree(tmp), tmp / "results", command=COMMAND,
                                config_name="config/test.yaml", experiment="exp",
                                manifest=tmp / "runs" / "exp" / "aggregated.json")
    return tmp / "results", written


def test_manifest_lists_what_was_aggregated(results):
    out, written = results
    manifest = json.loads((out.parent / "runs" / "exp" / "aggregated.json").read_text())
    assert manifest["experiment"] == "exp" and manifest["commit"] == "abc1234"
    assert manifest["files"] == sorted(str(p) for p in written.values())
    runs = manifest["runs"]
    assert all(r["state"] in ("base", "completed", "collapsed", "failed", "incomplete") for r in runs.values())
    assert any(name.endswith("/seed0") and r["evals"] for name, r in runs.items())


def board_row(out: Path, **where) -> pd.Series:
    board = pd.read_csv(out / "leaderboard.csv")
    rows = board[(board[list(where)] == pd.Series(where)).all(axis=1)]
    assert len(rows) == 1, rows
    return rows.iloc[0]


def stab_row(out: Path, suite: str, family: str, algorithm: str) -> pd.Series:
    table = pd.read_csv(out / "stability.csv")
    return table[(table.suite == suite) & (table.family == family) & (table.algorithm == algorithm)].iloc[0]


def md_line(text: str, section: str, label: str) -> str:
    """The table row of `label` in the markdown section headed exactly `## section`."""
    block = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    return next(line for line in block.splitlines() if line.startswith(f"| {label} |"))


def table_rows(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if line.startswith("| "))


def test_returns_every_file(results):
    out, written = results
    figures = {f"figures/{s}_{c}.png" for s in SUITES for c in ("entropy", "reward", "grad_norm")}
    figures.add("figures/performance_profile.png")
    assert set(written) == {"leaderboard.md", "leaderboard.csv", "stability.md", "stability.csv"} | figures
    assert all(p == out / name and p.is_file() for name, p in written.items())
    assert not list(out.rglob(".*.tmp"))


def test_leaderboard_csv_mean_std_n(results):
    out, _ = results
    grpo = board_row(out, suite="math", family="gpt2", algorithm="grpo", metric="pass@1")
    assert (grpo["mean"], grpo["std"], grpo["n"]) == pytest.approx((0.3, 0.02**0.5, 2), abs=1e-6)
    # the bootstrap of two seeds draws means 0.2, 0.3, 0.4 with probability 1/4, 1/2, 1/4
    assert (grpo["ci_low"], grpo["ci_high"], grpo["iqm"]) == pytest.approx((0.2, 0.4, 0.3), abs=1e-9)
    collapsed_included = board_row(out, suite="math", family="qwen2", algorithm="grpo", metric="avg@4")
    assert (collapsed_included["mean"], collapsed_included["n"]) == pytest.approx((0.45, 2))
    running_excluded = board_row(out, suite="math", family="gpt2", algorithm="wapo", metric="pass@1")
    assert (running_excluded["mean"], running_excluded["n"]) == (0.5, 1) and pd.isna(running_excluded["std"])
    assert pd.isna(running_excluded["ci_low"])  # no interval from one run
    base = board_row(out, suite="math", family="gpt2", algorithm=BASE_LABEL, metric="pass@4")
    assert (base["mean"], base["n"]) == pytest.approx((1.0, 1))
    f1 = board_row(out, suite="multihop", family="gpt2", algorithm="grpo", metric="f1")
    assert (f1["mean"], f1["n"]) == pytest.approx((0.5, 1))  # seed0 has no eval file
    chance = board_row(out, suite="multihop", family="qwen2", algorithm=CHANCE_LABEL)
    assert chance["mean"] == 0.25


def test_leaderboard_md_cells_intervals_and_columns(results):
    out, _ = results
    text = (out / "leaderboard.md").read_text()
    assert text.startswith("# Leaderboard — experiment `exp`")
    assert COMMAND in text and "config/test.yaml" in text and "abc1234" in text and "UTC" in text
    header = md_line(text, "math", "algorithm").removesuffix(" |")
    assert header.split(" | ")[1:] == ["gpt2 pass@1", "gpt2 pass@4", "qwen2 pass@1", "qwen2 pass@4"]  # avg@4: CSV
    assert md_line(text, "math", "grpo").split(" | ")[1] == "0.300 [0.20, 0.40] n=2"
    # 2 seeds never carry a bold: a full separation of 2 vs 2 happens by chance 1 time in 6
    assert md_line(text, "math", "wapo").split(" | ")[1] == "0.500 n=1"
    assert md_line(text, "math", "wapo").split(" | ")[3] == "0.750 [0.70, 0.80] n=2"
    assert "**" not in table_rows(text)
    assert md_line(text, "math", BASE_LABEL).split(" | ")[1] == "0.900 n=1"
    # QA: em equals pass@1 in every run, so it leaves the table, and says so
    assert md_line(text, "multihop", "algorithm").split(" | ")[1:3] == ["gpt2 pass@1", "gpt2 f1"]
    assert "`em` equals `pass@1` in every run" in text
    assert "| wapo | — | — |" in md_line(text, "multihop", "wapo") + " |"
    assert md_line(text, "multihop", CHANCE_LABEL).split(" | ")[1:3] == ["0.250", ""]
    rows = [line.split(" | ")[0] for line in text.split("\n## math\n")[1].splitlines() if line.startswith("| ")]
    assert rows[:4] == ["| algorithm", "| base (before RL)", "| grpo", "| wapo"]
    assert "`math/gpt2/wapo/seed1`: running at step 2" in text and "excluded" in text
    assert "SFT warm start reached sampled accuracy 0.310" in text


def test_all_tasks_row_uses_the_seeds_every_task_has(results):
    out, _ = results
    text = (out / "leaderboard.md").read_text()
    section = text.split("## All tasks", 1)[1]
    # grpo seed0 has no multihop/gpt2 eval: seed1 alone, pass@1 .4 .6 .4 .6 over the 4 tasks
    grpo = next(line for line in section.splitlines() if line.startswith("| grpo |")).split(" | ")
    assert grpo[1] == "0.500 n=4" and grpo[-1] == "1 × 4 |"
    assert "| wapo |" not in section  # no multihop/gpt2 run at all


def test_a_supported_lead_is_bold_and_a_tie_is_not(tmp_path):
    exp = tmp_path / "runs" / "exp" / "math" / "qwen2"
    scores = {"grpo": (0.30, 0.32, 0.31), "wapo": (0.50, 0.52, 0.51), "dapo": (0.30, 0.32, 0.31)}
    for algo, values in scores.items():
        for seed, value in enumerate(values):
            run = exp / algo / f"seed{seed}"
            run.mkdir(parents=True)
            (run / "status.json").write_text(json.dumps({"state": "completed", "step": 1}))
            write_eval(run, "math", value)
    text = agg.aggregate(tmp_path / "runs", tmp_path / "out", command="c", config_name="x")["leaderboard.md"].read_text()
    assert md_line(text, "math", "wapo").split(" | ")[1].startswith("**0.510 [")
    assert "**" not in md_line(text, "math", "grpo") + md_line(text, "math", "dapo")
    # wapo's pass@4 lead over the tie is supported too; with wapo gone, grpo = dapo: no bold
    shutil.rmtree(exp / "wapo")
    text = agg.aggregate(tmp_path / "runs", tmp_path / "out", command="c", config_name="x")["leaderboard.md"].read_text()
    assert "**" not in table_rows(text)


def test_stability_numbers(results):
    out, _ = results
    pooled = stab_row(out, "math", "all", "grpo")
    assert (pooled.runs, pooled.collapsed, pooled.incomplete) == (4, 1, 0)
    assert pooled.collapse_reasons == "1/4 (entropy collapse ×1)"
    # Wilson 95% of 1/4, by hand: centre (p + z²/2n)/(1 + z²/n), half-width z·sqrt(p(1-p)/n + z²/4n²)/(1 + z²/n)
    assert (pooled.collapse_rate_low, pooled.collapse_rate_high) == pytest.approx((0.04559, 0.69936), abs=1e-4)
    assert pooled.steps_to_collapse == 4
    assert pooled.entropy_ratio == pytest.approx((3 * 0.5 + 0.7) / 4, abs=1e-6)
    assert pooled.grad_norm_max == pytest.approx((6 + 12 + 6 + 10) / 4)
    assert pooled.reward_peak == pytest.approx((0.6 + 0.7 + 0.6 + 0.4) / 4, abs=1e-6)
    assert pooled.reward_final == pytest.approx((0.5 + 0.6 + 0.5 + 0.8 / 3) / 4, abs=1e-6)
    assert pooled.pos_peak_frac == pytest.approx((18 * 0.4 + 4 * 0.8) / 22, abs=1e-6)  # over all steps
    assert pooled.neg_valley_grad_mass == pytest.approx(0.25)
    family = stab_row(out, "math", "qwen2", "grpo")
    assert family.collapse_reasons == "1/2 (entropy collapse ×1)" and family.collapse_rate == 0.5
    assert family.entropy_ratio == pytest.approx(0.6, abs=1e-6)
    wapo = stab_row(out, "math", "all", "wapo")  # the running run's 1000s never count
    assert (wapo.runs, wapo.incomplete, wapo.collapse_reasons) == (3, 1, "0/3")
    assert wapo.grad_norm_max == pytest.approx(8.0) and wapo.entropy_ratio == pytest.approx(2.0)
    assert pd.isna(wapo.steps_to_collapse)


def test_stability_md(results):
    out, _ = results
    text = (out / "stability.md").read_text()
    assert text.startswith("# Stability — experiment `exp`") and COMMAND in text
    assert "Collapse thresholds (config.yaml `collapse:`): window 3, patience 5, entropy_low 0.1" in text
    cells = md_line(text, "math", "grpo").split(" | ")
    assert cells[1:5] == ["4", "1/4 (entropy collapse ×1)", "[0.05, 0.70]", "4.0 n=1"]
    assert cells[5].startswith("0.550 [") and cells[5].endswith("] n=4")
    assert md_line(text, "math", "wapo").split(" | ")[4] == "—"
    assert "`math/gpt2/wapo/seed1`: running at step 2" in text


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_figures_are_pngs_of_fixed_size(results):
    _, written = results
    sizes = {png_size(p) for name, p in written.items() if name.endswith(".png")}
    assert sizes == {(900, 420), (640, 420)}  # 2 families side by side: 2 × 4.5 in × 100 dpi; the profile


def test_empty_tree_is_one_line_error(tmp_path):
    (tmp_path / "runs" / "exp" / "math").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"no runs found under .*runs") as err:
        agg.aggregate(tmp_path / "runs", tmp_path / "out", command="c", config_name="x")
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="missing"):
        agg.aggregate(tmp_path / "missing", tmp_path / "out", command="c", config_name="x")
    assert not (tmp_path / "out").exists()


def test_partial_tree_does_not_crash(tmp_path, monkeypatch):
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: (_ for _ in ()).throw(FileNotFoundError("git")))
    exp = tmp_path / "runs" / "exp" / "math" / "qwen2"
    (exp / "dapo" / "seed0").mkdir(parents=True)  # nothing written yet
    broken = exp / "grpo" / "seed0"
    (broken / "eval").mkdir(parents=True)
    (broken / "status.json").write_text(json.dumps({"state": "failed", "step": 1, "reason": "OOM"}))
    (broken / "eval" / "math.json").write_text("{half")
    (broken / "metrics.jsonl").write_text('{"step": 1, "actor/entropy": 1.0}\n{"step": 2, "act')
    written = agg.aggregate(tmp_path / "runs", tmp_path / "out", command="c", config_name="x")
    assert set(written) == {"leaderboard.md", "leaderboard.csv", "stability.md", "stability.csv"}
    text = written["stability.md"].read_text()
    assert "commit `unknown`" in text and "`math/qwen2/grpo/seed0`: failed at step 1 (OOM)" in text
    assert "| dapo | 0 | — |" in text


def test_the_runs_read_back_are_the_plans_not_what_an_older_matrix_left(tmp_path):
    """With the plan's runs/<exp>/plan.json (written by the DAG, rlvr/plan.py) the tables hold the
    runs the matrix asks for: a wapo left on disk by an earlier matrix is not read."""
    from rlvr.plan import Plan
    from rlvr.report.runs import discover_runs

    root = build_tree(tmp_path) / "exp"
    plan = Plan({"experiment": "exp", "suites": {s: {} for s in SUITES}, "models": {f: {"family": f} for f in FAMILIES},
                 "algorithms": {"grpo": {}}, "seeds": list(SEEDS)})  # fmt: skip
    globbed = discover_runs(root)
    (root / "plan.json").write_text(json.dumps(plan.manifest()))
    planned = discover_runs(root)
    assert {r.algorithm for r in globbed} == {"grpo", "wapo", "base"}
    assert [(r.suite, r.family, r.label, r.seed) for r in planned] == [
        (r.suite, r.family, r.label, r.seed) for r in globbed if r.algorithm != "wapo"]
    assert len(planned) == len(SUITES) * len(FAMILIES) * (1 + len(SEEDS))
