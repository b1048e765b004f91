"""Arithmetic suite: integer expression problems with a worked step-by-step solution.

    prompt    "Q: 94+45-88="
    solution  " 94+45=139 139-88=51 \\boxed{51}"      (metadata["solution"], the SFT completion)
    answer    "51"

Difficulty is set by parameters (all recorded in each record's metadata):
    n_operands   int, or [lo, hi] drawn uniformly per problem (2..5); default [2, 3]
    max_operand  operands are drawn from 0..max_operand; default 99 (999 is a harder level)
    ops          operator alphabet, default "+-"; add "*" for a harder level
    allow_negative  if False, every intermediate and final value is >= 0
With "*", multiplications are worked first (standard precedence, left to right), then + and -
left to right, so the chain and the boxed value always equal the expression's true value.

Train and test never share an expression: the split is a hash of the expression (see _splits).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from evals.schema import Record
from evals.suites._splits import fill_splits, key_id

MIN_OPERANDS, MAX_OPERANDS = 2, 5


def solve(operands: Sequence[int], operators: Sequence[str]) -> tuple[int, list[str]]:
    """Value of the expression and its worked steps ("a+b=c"), products first."""
    terms, signs, steps = [operands[0]], [], []
    for op, x in zip(operators, operands[1:], strict=True):
        if op == "*":
            value = terms[-1] * x
            steps.append(f"{terms[-1]}*{x}={value}")
            terms[-1] = value
        else:
            terms.append(x)
            signs.append(op)
    acc = terms[0]
    for op, x in zip(signs, terms[1:], strict=True):
        value = acc + x if op == "+" else acc - x
        steps.append(f"{acc}{op}{x}={value}")
        acc = value
    return acc, steps


def _operand_range(n_operands: int | Sequence[int]) -> tuple[int, int]:
    bounds = [n_operands] * 2 if isinstance(n_operands, int) else list(n_operands)
    lo, hi = bounds if len(bounds) == 2 and all(isinstance(b, int) for b in bounds) else (0, 0)
    if not MIN_OPERANDS <= lo <= hi <= MAX_OPERANDS:
        raise ValueError(
            f"n_operands must be an int or [lo, hi] within {MIN_OPERANDS}..{MAX_OPERANDS}, "
            f"got {n_operands!r}"
        )
    return lo, hi


def generate(
    n_train: int | None = None,
    n_test: int | None = None,
    seed: int = 0,
    *,
    n_operands: int | Sequence[int] = (2, 3),
    max_operand: int = 99,
    ops: str = "+-",
    allow_negative: bool = True,
) -> dict[str, list[Record]]:
    """{"train": [...], "test": [...]} of arithmetic records; deterministic for a seed."""
    lo, hi = _operand_range(n_operands)
    if max_operand < 1:
        raise ValueError(f"max_operand must be >= 1, got {max_operand}")
    if not ops or set(ops) - set("+-*"):
        raise ValueError(f"ops must be a non-empty subset of '+-*', got {ops!r}")
    op_choices = sorted(set(ops))  # sorted: the draw must not depend on the string's order
    level: dict[str, Any] = {
        "n_operands": [lo, hi],
        "max_operand": max_operand,
        "ops": "".join(op_choices),
        "allow_negative": allow_negative,
    }

    def draw(rng: random.Random) -> tuple[str, Record]:
        while True:
            n = rng.randint(lo, hi)
            operands = [rng.randint(0, max_operand) for _ in range(n)]
            operators = [rng.choice(op_choices) for _ in range(n - 1)]
            value, steps = solve(operands, operators)
            if allow_negative or all(int(s.rsplit("=", 1)[1]) >= 0 for s in steps):
                break
        expr = str(operands[0]) + "".join(
            f"{op}{x}" for op, x in zip(operators, operands[1:], strict=True)
        )
        record = Record(
            id=key_id("math", expr),
            prompt=f"Q: {expr}=",
            answer=str(value),
            metadata={
                "solution": " " + " ".join(steps) + f" \\boxed{{{value}}}",
                "expression": expr,
                **level,
            },
        )
        return expr, record

    return fill_splits(
        draw, 4000 if n_train is None else n_train, 256 if n_test is None else n_test, seed
    )
