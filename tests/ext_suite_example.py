"""A suite defined outside `evals`: doubling a number, in the math suite's prompt format, scored by
the math reward. The matrix's `modules: [tests/ext_suite_example.py]` makes it trainable and
evaluable like a shipped one (it imports no torch: planning imports it)."""

import random

from evals.schema import Record
from evals.suites import Suite, register_suite


def generate(n_train=None, n_test=None, seed=0, max_operand=99):
    """Train and test never share an operand: odd operands train, even ones test."""
    rng = random.Random(seed)
    sizes = {"train": 64 if n_train is None else n_train, "test": 16 if n_test is None else n_test}
    splits = {}
    for split, parity in (("train", 1), ("test", 0)):
        operands = [a for a in range(max_operand + 1) if a % 2 == parity]
        picked = rng.sample(operands, min(sizes[split], len(operands)))
        splits[split] = [
            Record(f"{split}-{a}", f"Q: 2*{a}=", str(2 * a), {"solution": f" 2*{a}={2 * a} \\boxed{{{2 * a}}}", "operand": a})
            for a in picked
        ]
    return {split: records for split, records in splits.items() if records}


register_suite(Suite("doubling_example", "math", "math", generate, ("math",), "2*a (a suite of your own)"))
