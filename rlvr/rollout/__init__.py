"""Rollout engines behind one interface: sample G completions per prompt with their log-probs.

    base.py    Rollouts (what every engine returns) and the helpers engines share
    native.py  rlvr's KV-cached decoder for Llama/Qwen2 (the fast CPU path)
    hf.py      transformers generate, for any model
    vllm.py    vLLM, colocated with the trainer (GPU; imported only when selected)
    episode.py multi-turn search episodes on top of any of them (rollout.episode.mode=search)

Which engine runs, and what each supports, is the engine registry's (rlvr/engines.py): `auto`
(the default) is native where it applies, else hf.
"""

from __future__ import annotations

from rlvr.config import RolloutConfig
from rlvr.engines import ROLLOUT_FIELD, resolve
from rlvr.rollout.base import RolloutEngine, Rollouts
from rlvr.rollout.hf import HFRolloutEngine
from rlvr.rollout.native import NativeRolloutEngine

__all__ = ["HFRolloutEngine", "NativeRolloutEngine", "RolloutEngine", "Rollouts", "make_rollout_engine"]


def make_rollout_engine(cfg: RolloutConfig, model, tok, policy=None, **kwargs) -> RolloutEngine:
    """The engine of rollout.engine, wrapped in search episodes when rollout.episode.mode=search."""
    engine = resolve(ROLLOUT_FIELD, cfg.engine, lambda: model).build_sampler(model, tok, cfg, policy, **kwargs)
    if cfg.episode.mode == "search":
        from rlvr.retrieval import make_retriever
        from rlvr.rollout.episode import EpisodeEngine

        return EpisodeEngine(engine, tok, cfg, make_retriever(cfg.episode.retriever))
    return engine


# The registry's builders of the two in-process engines (rlvr/engines.py names them): they
# sample in bf16 where the trainer's policy trains under autocast (train.precision=bf16, CPU).
# Engine-specific keyword arguments (vLLM's seed) are vLLM's alone.
def native_sampler(model, tok, cfg: RolloutConfig, policy=None, **_) -> NativeRolloutEngine:
    return NativeRolloutEngine(model, tok, cfg, bf16=_bf16(policy))


def hf_sampler(model, tok, cfg: RolloutConfig, policy=None, **_) -> HFRolloutEngine:
    return HFRolloutEngine(model, tok, cfg, autocast_bf16=_bf16(policy))


def _bf16(policy) -> bool:
    return bool(policy and policy.autocast)
