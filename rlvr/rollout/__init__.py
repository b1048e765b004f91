"""Rollout engines behind one interface: sample G completions per prompt with their log-probs.

    base.py    Rollouts (what every engine returns) and the helpers engines share
    native.py  rlvr's KV-cached decoder for Llama/Qwen2 (the fast CPU path)
    hf.py      transformers generate, for any model
    vllm.py    vLLM, colocated with the trainer (GPU; imported only when selected)
    episode.py multi-turn search episodes on top of any of them (rollout.episode.mode=search)

`auto` (the default) is native where it applies, else hf.
"""

from __future__ import annotations

from rlvr.config import RolloutConfig
from rlvr.native.support import picks_native, unsupported_reason
from rlvr.rollout.base import RolloutEngine, Rollouts
from rlvr.rollout.hf import HFRolloutEngine
from rlvr.rollout.native import NativeRolloutEngine

__all__ = ["HFRolloutEngine", "NativeRolloutEngine", "RolloutEngine", "Rollouts", "make_rollout_engine"]


def make_rollout_engine(cfg: RolloutConfig, model, tok, policy=None, **kwargs) -> RolloutEngine:
    """The engine of rollout.engine, wrapped in search episodes when rollout.episode.mode=search."""
    engine = _make_sampler(cfg, model, tok, policy, **kwargs)
    if cfg.episode.mode == "search":
        from rlvr.retrieval import make_retriever
        from rlvr.rollout.episode import EpisodeEngine

        return EpisodeEngine(engine, tok, cfg, make_retriever(cfg.episode.retriever))
    return engine


def _make_sampler(cfg: RolloutConfig, model, tok, policy=None, **kwargs) -> RolloutEngine:
    """`auto`: the native decoder when it supports the model, else transformers generate."""
    bf16 = bool(policy and policy.autocast)
    if cfg.engine in ("auto", "native"):
        if picks_native(cfg.engine, unsupported_reason(model)):
            return NativeRolloutEngine(model, tok, cfg, bf16=bf16)
    if cfg.engine in ("auto", "hf"):
        return HFRolloutEngine(model, tok, cfg, autocast_bf16=bf16)
    from rlvr.rollout.vllm import VLLMRolloutEngine  # GPU only; imports vllm

    return VLLMRolloutEngine(model, tok, cfg, policy=policy, **kwargs)
