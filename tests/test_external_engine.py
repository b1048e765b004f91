"""An engine of your own through the run config alone: tests/ext_engine_example.py, named in
`algorithm.modules`, registers `counting_example` (transformers generate, counted); a real
training run samples with it (rollout.engine) and an lm-eval evaluation generates with it
(eval.backend). It draws what the hf engine draws, so the numbers are hf's to the byte."""

import pytest
from conftest import run_overrides
from test_engines import EXAMPLE

from rlvr.config import load_config
from rlvr.evaluate import evaluate
from rlvr.extensions import import_modules
from rlvr.train import train

pytestmark = pytest.mark.slow
STEPS, PROMPTS, GROUP = 2, 4, 4


def draws() -> dict[str, int]:
    (module,) = import_modules([str(EXAMPLE)])  # the module the run imported (once per file)
    return dict(module.DRAWS)


def train_and_evaluate(base, data, out, engine: str) -> dict:
    """One short run and its evaluation with rollout.engine = eval.backend = `engine`, and what
    the counting engine drew in each."""
    cfg = load_config(None, run_overrides(
        base, data, out, f"algorithm.modules=[{EXAMPLE}]", f"rollout.engine={engine}",
        f"eval.backend={engine}", f"train.steps={STEPS}", f"rollout.prompts_per_step={PROMPTS}",
        f"rollout.group_size={GROUP}", "rollout.max_new_tokens=16", "checkpoint.every=0",
        "train.threads=1", "eval.suites=[math]", "eval.limit=4", "eval.k=2",
    ))  # fmt: skip
    start = draws()
    status = train(cfg)
    trained = draws()
    result = evaluate(cfg)["math"]
    evaluated = draws()
    return {
        "status": status, "metrics": (out / "metrics.jsonl").read_bytes(), "eval": result,
        "training draws": {k: trained[k] - start[k] for k in start},
        "evaluation draws": {k: evaluated[k] - trained[k] for k in start},
    }  # fmt: skip


def test_training_and_evaluation_run_on_an_engine_of_your_own(sft_base, math_data, tmp_path):
    own = train_and_evaluate(sft_base, math_data, tmp_path / "own", "counting_example")
    assert own["status"]["state"] == "completed"
    # every rollout of the run and nothing else; evaluation generates through its lm-eval model
    assert own["training draws"] == {"rollouts": STEPS * PROMPTS * GROUP, "lm_eval_batches": 0}
    assert own["evaluation draws"]["rollouts"] == 0 and own["evaluation draws"]["lm_eval_batches"] > 0
    assert own["eval"]["backend"] == "counting_example"

    hf = train_and_evaluate(sft_base, math_data, tmp_path / "hf", "hf")
    assert hf["training draws"] == hf["evaluation draws"] == {"rollouts": 0, "lm_eval_batches": 0}
    assert own["metrics"] == hf["metrics"]  # byte for byte: the same draws, the same updates
    assert own["eval"]["metrics"] == hf["eval"]["metrics"] and hf["eval"]["backend"] == "hf"
