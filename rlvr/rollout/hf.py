"""rollout.engine=hf: transformers `generate` with its KV cache, for any causal LM."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rlvr.config import RolloutConfig
from rlvr.rollout.base import Rollouts, Turn, encode_prompts, left_pad, make_rollouts


class HFRolloutEngine:
    """transformers `generate` on the policy module itself: no weight copy, nothing to sync."""

    def __init__(self, model, tok, cfg: RolloutConfig, autocast_bf16: bool = False):
        self.model, self.tok, self.cfg = model, tok, cfg
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
        # transformers draws the whole batch from one RNG: a completion here depends on the rest
        # of its batch, so a data-parallel hf run differs from a one-process one (native does not)
        torch.manual_seed(int(seeds[0]) if seeds else 0)
        was_training = self.model.training
        self.model.eval()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.autocast_bf16):
            out = self._generate(ids, mask)
        self.model.train(was_training)
        return self._to_rollouts(ids, mask, out)

    @torch.no_grad()
    def extend(self, contexts: list[list[int]], seeds: list[int], max_new_tokens: int,
               temperature: float, stop: tuple[str, ...] = ()) -> list[Turn]:
        ids, mask = left_pad(contexts, self.tok.pad_token_id)
        torch.manual_seed(int(seeds[0]) if seeds else 0)  # one RNG for the batch, as generate
        was_training = self.model.training
        self.model.eval()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.autocast_bf16):
            out = self._generate(ids, mask, max_new_tokens, temperature, stop)
        self.model.train(was_training)
        roll = self._to_rollouts(ids, mask, out)
        # a row stopped by a stop string is padded after it: the caller cuts at the tag
        lengths = roll.completion_mask.sum(-1).long()
        return [Turn(roll.completion_ids[i, :n].tolist(), roll.sampling_logp[i, :n].tolist())
                for i, n in enumerate(lengths.tolist())]

    def _generate(self, ids, mask, max_new_tokens=None, temperature=None, stop=()):
        temperature = self.cfg.temperature if temperature is None else temperature
        sampling = {"do_sample": True, "temperature": temperature, "top_p": self.cfg.top_p, "top_k": 0}
        return self.model.generate(
            input_ids=ids,
            attention_mask=mask,
            **(sampling if temperature > 0 else {"do_sample": False}),
            max_new_tokens=max_new_tokens or self.cfg.max_new_tokens,
            pad_token_id=self.tok.pad_token_id,
            eos_token_id=self.tok.eos_token_id,
            output_scores=True,
            return_dict_in_generate=True,
            **({"stop_strings": list(stop), "tokenizer": self.tok} if stop else {}),
        )

    def _to_rollouts(self, ids, mask, out) -> Rollouts:
        completion = out.sequences[:, ids.shape[1] :]
        # scores are the processed logits (temperature, top-p) the sampler drew from
        scores = torch.stack(out.scores, dim=1).float()
        sampling_logp = F.log_softmax(scores, -1).gather(-1, completion.unsqueeze(-1)).squeeze(-1)
        return make_rollouts(self.tok, ids, mask, completion, sampling_logp)
