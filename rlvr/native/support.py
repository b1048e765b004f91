"""Which models the native layers run: the native engine's model support in the engine registry
(rlvr/engines.py), which rollout.engine, eval.backend and train.forward ask."""

from __future__ import annotations

SUPPORTED_MODEL_TYPES = ("llama", "qwen2")


def unsupported_reason(model) -> str | None:
    """Why the native decoder cannot run `model` (None when it can)."""
    if hasattr(model, "peft_config"):
        return "LoRA adapters are attached (the decoder reads plain weights)"
    config = model.config
    if config.model_type not in SUPPORTED_MODEL_TYPES:
        return f"model type {config.model_type!r} is not one of {list(SUPPORTED_MODEL_TYPES)}"
    if config.hidden_act != "silu":
        return f"hidden_act={config.hidden_act!r} (the decoder implements SwiGLU with silu)"
    layer_types = getattr(config, "layer_types", None) or ["full_attention"]
    if any(t != "full_attention" for t in layer_types):
        return "sliding-window attention layers"
    return None

