"""Model families: tiny random-initialised causal LMs for CPU, or any HF id / local path.

Tiny models share one character-level tokenizer: a byte-level BPE with no merges, so every
byte is one token and any text round-trips exactly. (A plain WordLevel char vocab silently
loses spaces and newlines once transformers 5.x picks a family-specific tokenizer class.)
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GPT2Config,
    LlamaConfig,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

PAD, EOS = "<pad>", "<eos>"


@dataclass(frozen=True)
class TinySpec:
    """Size of a tiny model; the same numbers build every family."""

    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 512
    max_positions: int = 256


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable-unicode map (space becomes 'Ġ', newline 'Ċ')."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level tokenizer with 256 byte tokens + <pad> + <eos>; round-trips any text."""
    vocab = {PAD: 0, EOS: 1}
    for b, ch in _bytes_to_unicode().items():
        vocab[ch] = b + 2
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([PAD, EOS])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=PAD, eos_token=EOS, padding_side="left"
    )


def _llama_like(config_cls: type[PretrainedConfig]):
    """Qwen2 and Llama take the same config fields (RMSNorm, RoPE, SwiGLU decoder)."""

    def build(spec: TinySpec, vocab: int, pad: int, eos: int) -> PretrainedConfig:
        return config_cls(
            vocab_size=vocab,
            hidden_size=spec.hidden_size,
            num_hidden_layers=spec.num_layers,
            num_attention_heads=spec.num_heads,
            num_key_value_heads=spec.num_heads,
            intermediate_size=spec.intermediate_size,
            max_position_embeddings=spec.max_positions,
            tie_word_embeddings=True,
            pad_token_id=pad,
            eos_token_id=eos,
            bos_token_id=eos,
        )

    return build


def _gpt2(spec: TinySpec, vocab: int, pad: int, eos: int) -> PretrainedConfig:
    return GPT2Config(
        vocab_size=vocab,
        n_embd=spec.hidden_size,
        n_layer=spec.num_layers,
        n_head=spec.num_heads,
        n_inner=spec.intermediate_size,
        n_positions=spec.max_positions,
        # no dropout: RL ratios need the same log-probs at sampling and update time
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        tie_word_embeddings=True,
        pad_token_id=pad,
        eos_token_id=eos,
        bos_token_id=eos,
    )


FAMILIES: dict[str, Callable[[TinySpec, int, int, int], PretrainedConfig]] = {
    "qwen2": _llama_like(Qwen2Config),
    "llama": _llama_like(LlamaConfig),
    "gpt2": _gpt2,
}


def build_tiny_model(
    family: str, spec: TinySpec | None = None, seed: int = 0, extra_eos: tuple[str, ...] = ()
) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """A random-initialised causal LM of `family` with the shared byte tokenizer. `extra_eos`:
    special tokens that end a turn besides <eos>, listed in the generation config's
    eos_token_id as Qwen3 lists <|im_end|> and <|endoftext|>."""
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; available: {sorted(FAMILIES)}")
    tok = build_tokenizer()
    if extra_eos:
        tok.add_special_tokens({"additional_special_tokens": list(extra_eos)})
    # Rounded up: some tokenizer classes add their own unk token (Qwen2's <|endoftext|>) on load.
    vocab = -(-len(tok) // 64) * 64
    config = FAMILIES[family](spec or TinySpec(), vocab, tok.pad_token_id, tok.eos_token_id)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config.pad_token_id = tok.pad_token_id
    extra = tok.convert_tokens_to_ids(list(extra_eos))
    model.generation_config.eos_token_id = [tok.eos_token_id, *extra] if extra else tok.eos_token_id
    return model, tok


def save_checkpoint(model: PreTrainedModel, tok: PreTrainedTokenizerFast, path: str | Path) -> None:
    """Save as a standard HF checkpoint (safetensors + tokenizer files)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tok.save_pretrained(path)


class ModelNotFoundError(FileNotFoundError):
    """model.name_or_path is neither a local HF checkpoint nor a hub id that can be loaded."""


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def check_model_source(name_or_path: str | Path) -> str:
    """"local" or "hub" for a model that can load, else ModelNotFoundError in one line naming the
    path and how it was tried. A string shaped like a hub id (`org/name`) that is not an existing
    directory is tried as a hub id; offline, only the local HF cache can serve it."""
    name = str(name_or_path)
    local = Path(name).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise ModelNotFoundError(
                f"model {name!r}: the directory {local.resolve()} has no config.json, so it is not "
                "an HF checkpoint (a run's final/ or hf_checkpoints/step_N is)"
            )
        return "local"
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        raise ModelNotFoundError(
            f"model {name!r}: no such local checkpoint directory ({local.resolve()} does not "
            "exist), and not a valid hub id either (org/name)"
        ) from None
    if _hub_offline():
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(name, "config.json"), str):
            raise ModelNotFoundError(
                f"model {name!r}: tried as a local path ({local.resolve()} does not exist) and as a "
                f"hub id, which is not in the local HF cache (HF_HUB_OFFLINE=1: no downloads); "
                f"download it with `huggingface-cli download {name}` or pass a checkpoint directory"
            )
    return "hub"


def load_model_and_tokenizer(
    name_or_path: str | Path, dtype: torch.dtype = torch.float32
) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """Load an HF id or a local checkpoint directory with the Auto classes."""
    name_or_path = str(name_or_path)
    source = check_model_source(name_or_path)
    from huggingface_hub.utils import logging as hub_logging

    verbosity = hub_logging.get_verbosity()
    hub_logging.set_verbosity_error()  # its retry warnings would come before our one-line error
    try:
        tok = AutoTokenizer.from_pretrained(name_or_path)
        model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=dtype)
    except OSError as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        where = (
            "the local checkpoint" if source == "local"
            else f"a hub id (it is not a local directory: {Path(name_or_path).resolve()})"
        )
        raise ModelNotFoundError(
            f"cannot load model {name_or_path!r}, tried as {where}: {reason} Download it with "
            "`huggingface-cli download` and pass the local directory"
        ) from err
    finally:
        hub_logging.set_verbosity(verbosity)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    model.generation_config.pad_token_id = tok.pad_token_id
    return model, tok


def use_bf16_friendly_attention(model) -> None:
    """For bf16 autocast on CPU: plain matmul attention instead of torch's CPU flash attention,
    whose bf16 backward is ~2.5x slower than its fp32 one (measured: 100 ms of a 150 ms backward
    at 128 x 44 tokens). Not saved with the checkpoint: a reload gets the default again."""
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation("eager")
