"""Imported by a run as an algorithm module (algorithm.modules) before its engine starts: the
vLLM engine then never receives new weights. The negative control of tests/test_vllm.py."""

from rlvr.rollout.vllm import VLLMRolloutEngine

VLLMRolloutEngine.sync_weights = lambda self: None
