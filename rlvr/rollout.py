"""Rollout engines behind one interface: sample G completions per prompt with their log-probs.

`hf` (transformers generate with a KV cache) lives here; `native` (rlvr's own KV-cached decoder
for Llama/Qwen2, the fast CPU path) in rlvr/native_engine.py; `vllm` (GPU) in rlvr/vllm_engine.py,
imported only when selected. `auto` (the default) is native where it applies, else hf.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F

from rlvr.config import RolloutConfig


@dataclass
class Rollouts:
    """N = prompts × G completions, prompt left-padded, completion right-padded."""

    prompt_ids: torch.Tensor  # [N, P] long
    prompt_mask: torch.Tensor  # [N, P] long
    completion_ids: torch.Tensor  # [N, T] long
    completion_mask: torch.Tensor  # [N, T] float: generated tokens up to and including EOS
    sampling_logp: torch.Tensor  # [N, T] float: log-prob under the sampling distribution
    truncated: torch.Tensor  # [N] bool: no EOS within the budget
    texts: list[str]  # decoded completions (special tokens removed)

    @property
    def lengths(self) -> torch.Tensor:
        return self.completion_mask.sum(-1)


class RolloutEngine(Protocol):
    def generate(self, prompts: list[str], n: int, seed: int) -> Rollouts:
        """Sample `n` completions for each prompt; completions of prompt i are rows i*n..i*n+n-1."""

    def sync_weights(self) -> None:
        """Make the engine sample from the policy's current weights."""


def completion_mask_from_ids(ids: torch.Tensor, eos_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask tokens up to and including the first EOS; a row without EOS is truncated."""
    is_eos = ids == eos_id
    after_eos = (is_eos.cumsum(-1) - is_eos.long()) > 0  # strictly after the first EOS
    return (~after_eos).float(), ~is_eos.any(-1)


def encode_prompts(
    tok, prompts: list[str], max_prompt_len: int, n: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded prompt ids, each prompt repeated `n` times (rows i*n..i*n+n-1 are prompt i);
    a prompt longer than the budget is an error, never cut silently."""
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    too_long = enc["attention_mask"].sum(-1) > max_prompt_len
    if too_long.any():
        i = int(too_long.nonzero()[0])
        raise ValueError(
            f"prompt {i} has {int(enc['attention_mask'][i].sum())} tokens > "
            f"rollout.max_prompt_len={max_prompt_len}; raise the budget or shorten the prompts"
        )
    return enc["input_ids"].repeat_interleave(n, 0), enc["attention_mask"].repeat_interleave(n, 0)


class HFRolloutEngine:
    """transformers `generate` on the policy module itself: no weight copy, nothing to sync."""

    def __init__(self, model, tok, cfg: RolloutConfig, autocast_bf16: bool = False):
        self.model, self.tok, self.cfg = model, tok, cfg
        self.autocast_bf16 = autocast_bf16  # train.precision=bf16 on CPU: sample in bf16 too

    def sync_weights(self) -> None:  # samples from the live module
        pass

    @torch.no_grad()
    def generate(self, prompts: list[str], n: int, seed: int) -> Rollouts:
        ids, mask = encode_prompts(self.tok, prompts, self.cfg.max_prompt_len, n)
        torch.manual_seed(seed)
        was_training = self.model.training
        self.model.eval()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.autocast_bf16):
            out = self._generate(ids, mask)
        self.model.train(was_training)
        return self._to_rollouts(ids, mask, out)

    def _generate(self, ids, mask):
        return self.model.generate(
            input_ids=ids,
            attention_mask=mask,
            do_sample=True,
            temperature=self.cfg.temperature,
            top_p=self.cfg.top_p,
            top_k=0,
            max_new_tokens=self.cfg.max_new_tokens,
            pad_token_id=self.tok.pad_token_id,
            eos_token_id=self.tok.eos_token_id,
            output_scores=True,
            return_dict_in_generate=True,
        )

    def _to_rollouts(self, ids, mask, out) -> Rollouts:
        completion = out.sequences[:, ids.shape[1] :]
        # scores are the processed logits (temperature, top-p) the sampler drew from
        scores = torch.stack(out.scores, dim=1).float()
        sampling_logp = F.log_softmax(scores, -1).gather(-1, completion.unsqueeze(-1)).squeeze(-1)
        return make_rollouts(self.tok, ids, mask, completion, sampling_logp)


def make_rollouts(tok, ids, mask, completion, sampling_logp) -> Rollouts:
    """Mask everything after each row's first EOS and decode the completions."""
    cmask, truncated = completion_mask_from_ids(completion, tok.eos_token_id)
    sampling_logp = torch.where(cmask.bool(), sampling_logp, torch.zeros_like(sampling_logp))
    texts = tok.batch_decode(
        completion * cmask.long() + tok.pad_token_id * (1 - cmask.long()),
        skip_special_tokens=True,
    )
    return Rollouts(ids, mask, completion, cmask, sampling_logp, truncated, texts)


def make_rollout_engine(cfg: RolloutConfig, model, tok, policy=None, **kwargs) -> RolloutEngine:
    """`auto`: the native decoder when it supports the model, else transformers generate."""
    bf16 = bool(policy and policy.autocast)
    if cfg.engine in ("auto", "native"):
        from rlvr.native_engine import NativeRolloutEngine, picks_native, unsupported_reason

        if picks_native(cfg.engine, unsupported_reason(model)):
            return NativeRolloutEngine(model, tok, cfg, bf16=bf16)
    if cfg.engine in ("auto", "hf"):
        return HFRolloutEngine(model, tok, cfg, autocast_bf16=bf16)
    from rlvr.vllm_engine import VLLMRolloutEngine  # GPU only; imports vllm

    return VLLMRolloutEngine(model, tok, cfg, policy=policy, **kwargs)
