"""rlvr.report.stress through `aggregate(sweep="train.lr")` on a hand-built stress tree: one suite, two
bases of one family (qwen2_b0, qwen2_b1), grpo and wapo at lr 1e-3, 3 seeds per base.

    grpo   every run collapses at step 5, 6, 7 (seed 0, 1, 2); reward 0.4 ×3 then 0 (half of the
           initial reached at step 5: rolling means .4 .267 .133); held-out pass@1 .2 (b0) / .4 (b1)
    wapo   completes 8 steps at reward 0.4; held-out .35 (b0) / .55 (b1)
    bases  held-out .3 (b0) / .5 (b1): Δ held-out −0.1 for every grpo run, +0.05 for every wapo run
"""

import json

import pandas as pd
import pytest
import yaml

from rlvr.report import aggregate as agg

PROVENANCE = {
    "device": {"kind": "cpu", "name": "AMD EPYC", "torch_capability": "AVX512", "bf16_flags": ["avx512_bf16"]},
    "precision": {"train.precision": {"requested": "fp32", "used": "fp32"}},
    "versions": {"torch": "2.13.0+cpu", "transformers": "5.24.0", "deepspeed": "0.19.8", "vllm": None,
                 "lm-eval": "0.4.13", "peft": "0.21.2", "math-verify": "0.9.0"},
}


def approx(expected):
    return pytest.approx(expected, abs=1e-5)  # stress.csv holds 6 significant digits


BASES = {"qwen2_b0": 0.3, "qwen2_b1": 0.5}
HELDOUT = {("grpo", "qwen2_b0"): 0.2, ("grpo", "qwen2_b1"): 0.4, ("wapo", "qwen2_b0"): 0.35, ("wapo", "qwen2_b1"): 0.55}


def write_json(path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def build(root):
    exp = root / "runs" / "stress" / "math"
    for model, score in BASES.items():
        write_json(exp / model / "base" / "config.json", {"model_type": "qwen2"})
        write_json(exp / model / "base" / "eval" / "math.json", {"metrics": {"pass@1": score}})
        for algo in ("grpo", "wapo"):
            for seed in range(3):
                run = exp / model / f"{algo}@lr=1e-3" / f"seed{seed}"
                steps = 5 + seed if algo == "grpo" else 8
                rewards = [0.4] * 3 + [0.0 if algo == "grpo" else 0.4] * (steps - 3)
                rows = [{"step": i + 1, "rollout/reward_mean": r, "actor/entropy": 1.0 + i, "actor/grad_norm": 1.0,
                         "taxonomy/pos_peak_grad_mass": 0.5} for i, r in enumerate(rewards)]
                run.mkdir(parents=True)
                (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
                state = "collapsed" if algo == "grpo" else "completed"
                write_json(run / "status.json", {"state": state, "step": steps, "steps_run": steps, "wall_s": 30.0,
                                                 "reason": "entropy explosion: ..." if algo == "grpo" else None})
                (run / "config.yaml").write_text(yaml.safe_dump({"algorithm": {"name": algo}, "train": {"lr": 1e-3}}))
                write_json(run / "eval" / "math.json", {"metrics": {"pass@1": HELDOUT[algo, model]}, "seconds": 5.0})
                write_json(run / "provenance.json", PROVENANCE | {"commit": "abc" if seed else "def"})
    return root / "runs"


@pytest.fixture(scope="module")
def stress_out(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("stress")
    written = agg.aggregate(build(tmp), tmp / "out", command="c", config_name="config/stress.yaml",
                            experiment="stress", sweep="train.lr", reps=500)
    return tmp / "out", written


def cell(out, algorithm: str) -> pd.Series:
    table = pd.read_csv(out / "stress.csv")
    return table[table.algorithm == algorithm].iloc[0]


def test_every_stress_file_is_written(stress_out):
    out, written = stress_out
    kinds = ("collapse", "heldout", "steps", "entropy", "grad_norm", "taxonomy")
    assert {f"figures/stress_math_{k}.png" for k in kinds} | {"stress.md", "stress.csv", "stress_runs.csv"} <= set(written)


def test_the_two_bases_pool_into_one_family(stress_out):
    out, _ = stress_out
    grpo, wapo = cell(out, "grpo"), cell(out, "wapo")
    assert (grpo.family, grpo.setting, grpo.runs, grpo.bases) == ("qwen2", 0.001, 6, 2)
    assert (wapo.runs, wapo.bases) == (6, 2)


def test_collapse_rate_and_steps(stress_out):
    out, _ = stress_out
    grpo, wapo = cell(out, "grpo"), cell(out, "wapo")
    z2 = 1.959963984540054**2
    assert (grpo.collapsed, grpo.collapse_rate, grpo.collapse_low, grpo.collapse_high) == approx((6, 1.0, 6 / (6 + z2), 1.0))
    assert (wapo.collapsed, wapo.collapse_low, wapo.collapse_high) == approx((0, 0.0, z2 / (6 + z2)))
    assert (grpo.steps_to_collapse_median, grpo.steps_to_collapse_min, grpo.steps_to_collapse_max) == (6, 5, 7)
    assert (grpo.half_reward_reached, grpo.steps_to_half_reward_median) == (6, 5)
    assert wapo.half_reward_reached == 0 and pd.isna(wapo.steps_to_half_reward_median)


def test_continuous_measures_with_the_base_as_a_factor(stress_out):
    out, _ = stress_out
    grpo, wapo = cell(out, "grpo"), cell(out, "wapo")
    # last 3 − first 3: seed 0 stops at step 5 (last three .4 0 0: −0.267), seeds 1, 2 at −0.4
    assert grpo.reward_change == approx((-0.4 * 2 / 3 - 0.4 - 0.4) / 3) and wapo.reward_change == approx(0.0)
    # seeds agree within a base, bases differ: resampling the bases gives b0b0 .2, b0b1 .3, b1b1 .4
    assert (grpo.heldout, grpo.heldout_low, grpo.heldout_high) == approx((0.3, 0.2, 0.4))
    assert (grpo.heldout_change, grpo.heldout_change_low, grpo.heldout_change_high) == approx((-0.1, -0.1, -0.1))
    assert wapo.heldout_change == approx(0.05)
    # within each base wapo beats grpo in every pair (.35 > .2, .55 > .4): 1; pooling the bases
    # instead would compare b0's wapo .35 with b1's grpo .4 and dilute it to 27/36
    assert wapo.p_heldout_over_baseline == approx(1.0) and pd.isna(grpo.p_heldout_over_baseline)


def test_stress_md_names_the_rule_and_the_bases(stress_out):
    out, _ = stress_out
    text = (out / "stress.md").read_text()
    assert "`qwen2_b0` (qwen2) 0.300; `qwen2_b1` (qwen2) 0.500" in text
    row = next(line for line in text.splitlines() if line.startswith("| grpo | 0.001 |"))
    assert "| 6/6 = 1.00 [0.61, 1.00] | 6 (5–7) |" in row
    assert "Training wall time of these runs: 6.0 min summed" in text  # 12 runs × 30 s
    per_run = pd.read_csv(out / "stress_runs.csv")
    assert len(per_run) == 12 and set(per_run.model) == set(BASES)


def test_headers_name_versions_devices_commits_and_wall_time(stress_out):
    out, _ = stress_out
    for name in ("stress.md", "leaderboard.md", "stability.md"):
        text = (out / name).read_text()
        assert ("Runs made with torch 2.13.0+cpu, transformers 5.24.0, deepspeed 0.19.8, vllm not installed, "
                "lm-eval 0.4.13, peft 0.21.2, math-verify 0.9.0; device AMD EPYC (AVX512; avx512_bf16); "
                "training precision fp32; run commits abc (8 runs) / def (4 runs).") in text, name
        assert "training 6.0 min (12 runs)" in text and "lm-eval scoring 1.0 min" in text
