"""lm-eval's HF model, generating with rlvr's native decoder (eval.backend=native, or auto).

Everything except generation stays lm-eval's HFLM: request grouping and batching, context
encoding and left truncation, stop-sequence post-processing, log-likelihood requests. Only
`_model_generate` changes, to the decoder the RL loop samples with (rlvr/rollout/native.py), so
evaluating a tiny model does not pay transformers' per-token `generate` overhead. Stop strings
other than EOS are applied by lm-eval to the decoded text, as with the hf backend.
"""

from __future__ import annotations

import torch
from lm_eval.models.huggingface import HFLM

from rlvr.config import RolloutConfig
from rlvr.rollout.native import NativeRolloutEngine

SUPPORTED_KWARGS = {"do_sample", "temperature", "top_p", "top_k", "attention_mask"}


class NativeHFLM(HFLM):
    def __init__(self, pretrained, tokenizer, batch_size: int):
        super().__init__(pretrained=pretrained, tokenizer=tokenizer, batch_size=batch_size)
        self.decoder = NativeRolloutEngine(pretrained, tokenizer, RolloutConfig())

    def _model_generate(self, context, max_length: int, stop: list[str], **kwargs) -> torch.Tensor:
        unsupported = sorted(set(kwargs) - SUPPORTED_KWARGS)
        if kwargs.get("top_k"):  # top_k 0 / None: no top-k filter, which is all the decoder does
            unsupported.append(f"top_k={kwargs['top_k']}")
        if unsupported:
            raise ValueError(
                f"eval.backend=native does not implement generation kwargs {unsupported} "
                "(supported: do_sample, temperature, top_p, top_k=0); use eval.backend=hf"
            )
        mask = kwargs.get("attention_mask")
        mask = torch.ones_like(context) if mask is None else mask
        temperature = float(kwargs.get("temperature") or 0.0) if kwargs.get("do_sample") else 0.0
        tokens, _, _ = self.decoder.decode(
            context, mask, max_length - context.shape[1], temperature, kwargs.get("top_p") or 1.0
        )
        return torch.cat([context, tokens], 1)
