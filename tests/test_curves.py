"""rlvr.report.scaling: ScaleRL's saturating fit recovers known parameters, and learning curves are read
back with the rollout compute their runs logged."""

import json
from datetime import datetime, timezone

import numpy as np
import pandas as pd
import pytest

from rlvr.report import REPORTS, Options
from rlvr.report import scaling as curves
from rlvr.report.header import Header
from rlvr.report.runs import discover_runs

TRUE = {"r0": 0.35, "a": 0.80, "b": 1.8, "c_mid": 30_000.0}


def noisy_curve(rng, sd: float = 0.005) -> pd.DataFrame:
    compute = np.linspace(2_000, 120_000, 12)
    score = curves.saturating(compute, **TRUE) + rng.normal(0, sd, len(compute))
    return pd.DataFrame({"step": range(1, 13), "compute": compute, "score": score})


def test_the_curve_passes_through_its_defining_points():
    assert curves.saturating(1e-12, **TRUE) == pytest.approx(TRUE["r0"])
    assert curves.saturating(1e15, **TRUE) == pytest.approx(TRUE["a"])
    assert curves.saturating(TRUE["c_mid"], **TRUE) == pytest.approx((TRUE["a"] + TRUE["r0"]) / 2)


def test_fit_recovers_known_parameters_from_noisy_points():
    curve = noisy_curve(np.random.default_rng(0))
    a, b, c_mid = curves.fit(curve.compute, curve.score, TRUE["r0"])
    assert a == pytest.approx(TRUE["a"], abs=0.01)
    assert b == pytest.approx(TRUE["b"], rel=0.15)
    assert c_mid == pytest.approx(TRUE["c_mid"], rel=0.1)


def test_a_declining_curve_fits_an_asymptote_below_the_start():
    compute = np.linspace(1_000, 50_000, 10)
    score = curves.saturating(compute, 0.5, 0.2, 2.0, 10_000.0)
    a, b, c_mid = curves.fit(compute, score, 0.5)
    assert (a, b, c_mid) == pytest.approx((0.2, 2.0, 10_000.0), rel=1e-3)


def test_bootstrap_intervals_hold_the_fit_and_shrink_with_the_noise():
    rng = np.random.default_rng(1)
    widths = {}
    for sd in (0.02, 0.005):
        runs = [noisy_curve(rng, sd=sd) for _ in range(6)]
        est = curves.bootstrap_fit(runs, [TRUE["r0"]] * 6, reps=100)
        for name, truth in zip(curves.PARAMS, (TRUE["a"], TRUE["b"], TRUE["c_mid"]), strict=True):
            e = est[name]
            assert e.low <= e.point <= e.high and e.n == 6, (name, e)
            # the truth lies within the interval's own width of the fit (a 95% interval misses 1 in 20)
            assert abs(e.point - truth) <= max(e.high - e.low, 1e-9 * truth) + 0.02 * truth, (name, e)
        widths[sd] = est["A"].high - est["A"].low
    assert widths[0.005] < widths[0.02] < 0.05


def test_too_few_checkpoints_is_an_error():
    with pytest.raises(ValueError, match="at least 3 checkpoints"):
        curves.fit([1.0, 2.0], [0.1, 0.2], 0.0)


def write_curve_run(root, seed: int, scores: list[float]) -> None:
    run = root / "math" / "qwen2" / "grpo" / f"seed{seed}"
    (run / "curve").mkdir(parents=True)
    (run / "status.json").write_text(json.dumps({"state": "completed", "step": 4, "steps_run": 4}))
    (run / "metrics.jsonl").write_text("".join(
        json.dumps({"step": s, "rollout/generated_tokens": 100 * s}) + "\n" for s in range(1, 5)))
    points = [{"step": s, "checkpoint": f"x/step_{s}", "metrics": {"pass@1": v}} for s, v in zip((2, 3, 4), scores, strict=True)]
    (run / "curve" / "math.json").write_text(json.dumps({"suite": "math", "points": points}))


def test_compute_is_the_cumulative_generated_tokens(tmp_path):
    base = tmp_path / "math" / "qwen2" / "base" / "eval"
    base.mkdir(parents=True)
    (base / "math.json").write_text(json.dumps({"metrics": {"pass@1": 0.1}}))
    write_curve_run(tmp_path, 0, [0.2, 0.3, 0.35])
    write_curve_run(tmp_path, 1, [0.3, 0.4, 0.45])
    runs = discover_runs(tmp_path)
    curve = curves.run_curve(next(r for r in runs if r.seed == 0))
    # tokens 100, 200, 300, 400 per step: cumulative 300 at step 2, 600 at 3, 1000 at 4
    assert curve.to_dict("list") == {"step": [2, 3, 4], "compute": [300.0, 600.0, 1000.0], "score": [0.2, 0.3, 0.35]}
    groups = curves.collect(runs)
    assert list(groups) == [("math", "grpo")] and [r0 for _, r0 in groups["math", "grpo"]] == [0.1, 0.1]
    scaling = next(r for r in REPORTS if r.name == "scaling")
    header = Header("exp", "c", "config.yaml", "abc1234", datetime(2026, 1, 1, tzinfo=timezone.utc))
    files = scaling.make(runs, header, Options(curves=True, reps=20))
    assert set(files) == {"scaling.md", "scaling.csv", "figures/math_scaling.png"}
    row = pd.read_csv(pd.io.common.StringIO(files["scaling.csv"])).iloc[0]
    assert (row.runs, row.R0, row.final_compute, row.final_score) == pytest.approx((2, 0.1, 1000.0, 0.4))
    assert "| grpo | 2 | 0.100 |" in files["scaling.md"]
