"""rollout.engine=hf: transformers `generate` with its KV cache, for any causal LM."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rlvr.config import RolloutConfig
from rlvr.rollout.base import (
    Rollouts,
    Turn,
    completion_mask_from_ids,
    encode_prompts,
    left_pad,
    make_rollouts,
    stop_token_ids,
    turns_from,
)


class HFRolloutEngine:
    """transformers `generate` on the policy module itself: no weight copy, nothing to sync."""

    def __init__(self, model, tok, cfg: RolloutConfig, autocast_bf16: bool = False):
        self.model, self.tok, self.cfg = model, tok, cfg
        self.eos_ids = stop_token_ids(tok, model)
        self.autocast_bf16 = autocast_bf16  # train.precision=bf16 on CPU: sample in bf16 too

    def sync_weights(self) -> None:  # samples from the live module
        pass

    def close(self) -> None:  # holds nothing of its own
        pass

    def sleep(self) -> None:  # no accelerator memory to free
        pass

    @torch.no_grad()
    def generate(self, prompts: list[str], n: int, seeds: list[int]) -> Rollouts:
        ids, mask = encode_prompts(self.tok, prompts, self.cfg.max_prompt_len, n)
        completion, sampling_logp = self._sample(ids, mask, seeds, self.cfg.max_new_tokens, self.cfg.temperature)
        return make_rollouts(self.tok, ids, mask, completion, sampling_logp, self.eos_ids)

    @torch.no_grad()
    def extend(self, contexts: list[list[int]], seeds: list[int], max_new_tokens: int,
               temperature: float, stop: tuple[str, ...] = ()) -> list[Turn]:
        ids, mask = left_pad(contexts, self.tok.pad_token_id)
        completion, sampling_logp = self._sample(ids, mask, seeds, max_new_tokens, temperature, stop)
        # up to EOS; a row stopped by a stop string is padded after it: the caller cuts at the tag
        cmask, _ = completion_mask_from_ids(completion, self.eos_ids)
        return turns_from(completion, sampling_logp, cmask.sum(-1).long())

    def _sample(self, ids, mask, seeds, max_new_tokens, temperature, stop=()):
        """transformers generate in eval mode (bf16 autocast where training is bf16): the
        completion ids and the log-probs of the processed distribution each token was drawn from."""
        # transformers draws the whole batch from one RNG: a completion here depends on the rest
        # of its batch, so a data-parallel hf run differs from a one-process one (native does not)
        torch.manual_seed(int(seeds[0]) if seeds else 0)
        was_training = self.model.training
        self.model.eval()
        sampling = {"do_sample": True, "temperature": temperature, "top_p": self.cfg.top_p, "top_k": 0}
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.autocast_bf16):
            out = self.model.generate(
                input_ids=ids,
                attention_mask=mask,
                **(sampling if temperature > 0 else {"do_sample": False}),
                max_new_tokens=max_new_tokens,
                pad_token_id=self.tok.pad_token_id,
                eos_token_id=list(self.eos_ids),
                output_scores=True,
                return_dict_in_generate=True,
                **({"stop_strings": list(stop), "tokenizer": self.tok} if stop else {}),
            )
        self.model.train(was_training)
        completion = out.sequences[:, ids.shape[1] :]
        # scores are the processed logits (temperature, top-p) the sampler drew from
        scores = torch.stack(out.scores, dim=1).float()
        return completion, F.log_softmax(scores, -1).gather(-1, completion.unsqueeze(-1)).squeeze(-1)
