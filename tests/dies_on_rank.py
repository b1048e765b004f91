"""GRPO that raises on rank 1 at step RLVR_TEST_DIE_AT_STEP (0-based; unset: never), for the
data-parallel test of a rank that dies mid-run (tests/test_data_parallel.py)."""

import os

import algorithms
from algorithms.grpo import GRPO

CALLS = [0]  # advantages calls in this process: one per step


@algorithms.register("grpo_dies_on_rank")
class GRPODiesOnRank(GRPO):
    def advantages(self, rewards, group_ids):
        die_at = os.environ.get("RLVR_TEST_DIE_AT_STEP")
        if die_at is not None and os.environ.get("RANK") == "1" and CALLS[0] == int(die_at):
            raise RuntimeError(f"injected failure on rank 1 at step {die_at}")
        CALLS[0] += 1
        return super().advantages(rewards, group_ids)
