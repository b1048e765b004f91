"""The policy update: the DeepSpeed engine (policy.py) and its process group (distributed.py),
how completions are scored into log-probs (scoring.py), and one update on a step's batch
(step.py: mini-batches → micro-batches → algo.policy_loss → optimizer steps → statistics)."""

from rlvr.update.policy import Policy
from rlvr.update.step import Batch, PolicyUpdate

__all__ = ["Batch", "Policy", "PolicyUpdate"]
