"""Colocated vLLM rollout engine (GPU only). NEEDS THE GPU CHECK: tests/gpu/check.sh.

The engine lives in the trainer's process (V1 multiprocessing off, as TRL's colocate mode does),
so weights go from the DeepSpeed module to vLLM's model by reference with `load_weights`, and
the engine sleeps (weights offloaded, KV cache freed) while DeepSpeed updates, then wakes.
Imported only when `rollout.engine: vllm`; `import vllm` succeeds on CPU but `LLM()` cannot.
"""

from __future__ import annotations

import os

import torch

from rlvr.config import RolloutConfig
from rlvr.rollout.base import Rollouts


class VLLMRolloutEngine:
    def __init__(self, model, tok, cfg: RolloutConfig, policy=None, seed: int = 0):
        # in-process engine: tensors cross by reference, no IPC copy of the weights
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        from vllm import LLM

        if not torch.cuda.is_available():
            raise RuntimeError("rollout.engine=vllm needs a CUDA GPU; use rollout.engine=hf on CPU")
        self.tok, self.cfg, self.policy = tok, cfg, policy
        world = int(os.environ.get("WORLD_SIZE", "1"))
        self.llm = LLM(
            model=model.name_or_path,
            tokenizer=model.name_or_path,
            dtype=cfg.vllm.dtype,
            gpu_memory_utilization=cfg.vllm.gpu_memory_utilization,
            tensor_parallel_size=cfg.vllm.tensor_parallel_size,
            max_model_len=cfg.max_prompt_len + cfg.max_new_tokens,
            enable_sleep_mode=cfg.vllm.sleep_mode,
            seed=seed,
            # under torchrun every rank drives its own engine on its own GPU
            distributed_executor_backend="external_launcher" if world > 1 else None,
        )
        self.asleep = False

    def _full_state_dict(self) -> dict[str, torch.Tensor]:
        """The policy's current weights, gathered when ZeRO-3 partitions them; LoRA merged."""
        import deepspeed

        module = self.policy.engine.module
        params = list(module.parameters())
        with deepspeed.zero.GatheredParameters(
            params, enabled=self.policy.cfg.train.zero_stage == 3
        ):
            if self.policy.cfg.model.lora.enabled:
                module.merge_adapter()
                state = {
                    k.replace("base_model.model.", "").replace(".base_layer", ""): v.detach()
                    for k, v in module.state_dict().items()
                    if "lora_" not in k
                }
                module.unmerge_adapter()
            else:
                state = {k: v.detach() for k, v in module.state_dict().items()}
        return state

    def sync_weights(self) -> None:
        if self.policy is None:
            return
        self.wake()
        state = self._full_state_dict()
        self.llm.apply_model(lambda m: m.load_weights(weights=state.items()))
        self.llm.reset_prefix_cache()  # cached KV blocks were computed with the old weights

    def sleep(self) -> None:
        if self.cfg.vllm.sleep_mode and not self.asleep:
            self.llm.sleep(level=1)
            self.asleep = True

    def wake(self) -> None:
        if self.asleep:
            self.llm.wake_up()
            self.asleep = False

    def generate(self, prompts: list[str], n: int, seeds: list[int]) -> Rollouts:
        from vllm import SamplingParams

        self.wake()
        # one seeded request per prompt: its n completions do not depend on the rest of the batch
        params = [
            SamplingParams(
                n=n,
                temperature=self.cfg.temperature,
                top_p=self.cfg.top_p,
                max_tokens=self.cfg.max_new_tokens,
                logprobs=0,
                seed=int(seed),
            )
            for seed in seeds
        ]
        enc = self.tok(prompts, add_special_tokens=False)["input_ids"]
        outputs = self.llm.generate(
            [{"prompt_token_ids": ids} for ids in enc], params, use_tqdm=False
        )
        self.sleep()  # free the GPU for the DeepSpeed update
        return self._to_rollouts(enc, outputs, n)

    def _to_rollouts(self, enc, outputs, n) -> Rollouts:
        """vLLM returns each completion's tokens up to and including EOS; finish_reason 'length'
        means the budget ran out (truncated)."""
        pad = self.tok.pad_token_id
        P, T, N = max(len(x) for x in enc), self.cfg.max_new_tokens, len(enc) * n
        prompt_ids = torch.full((N, P), pad)
        prompt_mask = torch.zeros((N, P), dtype=torch.long)
        completion_ids = torch.full((N, T), pad)
        cmask = torch.zeros((N, T))
        sampling_logp = torch.zeros((N, T))
        truncated = torch.zeros(N, dtype=torch.bool)
        for i, (ids, out) in enumerate(zip(enc, outputs, strict=True)):
            for j, comp in enumerate(out.outputs):
                row, toks = i * n + j, list(comp.token_ids)[:T]
                prompt_ids[row, P - len(ids) :] = torch.tensor(ids)
                prompt_mask[row, P - len(ids) :] = 1
                completion_ids[row, : len(toks)] = torch.tensor(toks, dtype=torch.long)
                cmask[row, : len(toks)] = 1
                lp = [d[t].logprob for d, t in zip(comp.logprobs or [], toks, strict=False)]
                sampling_logp[row, : len(lp)] = torch.tensor(lp)
                truncated[row] = comp.finish_reason == "length"
        texts = [
            self.tok.decode(completion_ids[r, : int(cmask[r].sum())], skip_special_tokens=True)
            for r in range(N)
        ]
        return Rollouts(
            prompt_ids, prompt_mask, completion_ids, cmask, sampling_logp, truncated, texts
        )
