"""`rlvr eval`: checkpoints scored on suites through lm-eval, with the training verifiers.

    harness.py    one lm-eval run per suite (greedy pass@1; k samples for avg@k, pass@k), results
    native_lm.py  lm-eval's HF model generating with rlvr's native decoder (eval.backend=native)
"""

from rlvr.evaluate.harness import (
    default_checkpoint,
    default_out,
    evaluate,
    evaluate_checkpoints,
    evaluate_curve,
    summary_line,
)

__all__ = ["default_checkpoint", "default_out", "evaluate", "evaluate_checkpoints", "evaluate_curve", "summary_line"]
