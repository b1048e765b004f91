"""The policy under training, wrapped in the real DeepSpeed engine.

CPU: one gloo process, a torch AdamW (no fused-Adam compile). GPU: `torchrun` over the node's
GPUs, ZeRO stage from config. Gradient accumulation is *unmanaged*: the loop calls backward on
each micro-batch loss (already divided by the mini-batch normaliser, so no 1/GAS rescaling) and
step() once per mini-batch, which keeps the algorithm's normaliser exact under micro-batching.
"""

from __future__ import annotations

import contextlib

import torch

from rlvr.config import RunConfig
from rlvr.models import use_bf16_friendly_attention
from rlvr.update.distributed import init_distributed
from rlvr.update.scoring import completion_logits_of, token_logprobs, use_native_forward

REDUCE_BUCKET_ELEMENTS = 500_000_000  # DeepSpeed's default allreduce bucket (elements)


def deepspeed_config(cfg: RunConfig) -> dict:
    return {
        "train_micro_batch_size_per_gpu": cfg.train.micro_batch_size,
        "gradient_accumulation_steps": 1,
        "managed_gradient_accumulation": False,
        "gradient_clipping": cfg.train.grad_clip,
        "zero_optimization": {"stage": cfg.train.zero_stage},
        "bf16": {"enabled": cfg.train.precision == "bf16" and torch.cuda.is_available()},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def wrap_lora(model, cfg: RunConfig):
    from peft import LoraConfig, get_peft_model

    lora = cfg.model.lora
    return get_peft_model(
        model,
        LoraConfig(
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=lora.target_modules,
            task_type="CAUSAL_LM",
        ),
    )


class Policy:
    """DeepSpeed engine + the scoring function shared by the old-log-prob pass and the update."""

    def __init__(self, model, cfg: RunConfig):
        import deepspeed

        init_distributed()
        if cfg.model.lora.enabled:
            model = wrap_lora(model, cfg)
        self.cfg = cfg
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(
            params,
            lr=cfg.train.lr,
            betas=tuple(cfg.train.betas),
            weight_decay=cfg.train.weight_decay,
            # one fused kernel per step on CPU (measured 0.5 vs 1.9 ms for the tiny Qwen2); the
            # GPU path keeps the default until the GPU check covers it
            fused=not torch.cuda.is_available(),
        )
        warmup = cfg.train.warmup_steps
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0
        )
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler, config=deepspeed_config(cfg)
        )
        self.module = self.engine.module
        self.world = torch.distributed.get_world_size()
        if cfg.train.zero_stage == 0:
            # ZeRO 0: `step` reduces the gradients itself (DeepSpeed's own bucketed allreduce),
            # before it reads their norm, so the norm and the finite check are the global ones;
            # one rank averages with nobody and skips it. ZeRO 1-3 reduce inside their optimizers.
            self.engine.enable_backward_allreduce = False
        # bf16 on CPU is autocast (the DeepSpeed bf16 optimizer path needs a GPU)
        self.autocast = cfg.train.precision == "bf16" and not torch.cuda.is_available()
        if self.autocast:
            use_bf16_friendly_attention(self.module)
        self.device = self.engine.device
        self.native_forward = use_native_forward(
            cfg.train.forward, self.module, cfg.train.zero_stage, self.device
        )

    def hf_state_dict(self) -> dict[str, torch.Tensor]:
        """The current weights under the base model's HF names, gathered when ZeRO-3 partitions
        them, LoRA merged in: what an engine holding its own copy (vLLM, the overlap rollout
        process) loads. Without LoRA the tensors are the live ones (detached, not copied)."""
        import deepspeed

        module = self.engine.module
        with deepspeed.zero.GatheredParameters(
            list(module.parameters()), enabled=self.cfg.train.zero_stage == 3
        ):
            if not self.cfg.model.lora.enabled:
                return {k: v.detach() for k, v in module.state_dict().items()}
            module.merge_adapter()
            # copies: unmerging below restores the base weights in place
            state = {
                k.replace("base_model.model.", "").replace(".base_layer", ""): v.detach().clone()
                for k, v in module.state_dict().items()
                if "lora_" not in k
            }
            module.unmerge_adapter()
            return state

    def reference_context(self):
        """With LoRA, the frozen reference is the base with adapters disabled."""
        return (
            self.module.disable_adapter()
            if self.cfg.model.lora.enabled
            else contextlib.nullcontext()
        )

    def score(
        self,
        model,
        prompt_ids,
        prompt_mask,
        completion_ids,
        completion_mask,
        temperature: float,
        with_stats: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Per-token log-probs of the completion under `model` (this policy's engine or module,
        or a reference model) at the sampling temperature: rlvr/update/scoring.py."""
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.autocast):
            logits = completion_logits_of(
                model, prompt_ids, prompt_mask, completion_ids, completion_mask,
                self.native_forward, self.device,
            )  # fmt: skip
        return token_logprobs(logits, completion_ids.to(self.device), temperature, with_stats)

    def zero_grad(self) -> None:
        self.engine.zero_grad()

    def backward(self, loss: torch.Tensor) -> None:
        """`loss` is this rank's part of the mini-batch loss (divided by the global normaliser);
        DeepSpeed averages gradients over ranks, so × world makes the average their sum: the
        gradient of the whole global mini-batch, equal to one process's."""
        self.engine.backward(loss * self.world if self.world > 1 else loss, scale_wrt_gas=False)

    @property
    def reduces_in_backward(self) -> bool:
        """ZeRO 2/3 across ranks reduce gradient buckets inside every backward: every rank must
        then run the same number of backward calls per optimizer step."""
        return self.world > 1 and self.cfg.train.zero_stage >= 2

    def grad_norm(self) -> float:
        """Global gradient norm before clipping (full local grads at ZeRO 0/1)."""
        grads = [p.grad for p in self.module.parameters() if p.grad is not None]
        if not grads:
            return 0.0
        return float(
            torch.linalg.vector_norm(
                torch.stack([torch.linalg.vector_norm(g.float()) for g in grads])
            )
        )

    def step(self) -> tuple[float, bool]:
        """Clip + optimizer step. Returns (pre-clip gradient norm, whether the update was applied).

        A non-finite gradient is dropped (no step) at ZeRO 0, and at ZeRO 1 on one rank. At ZeRO
        2/3 (and ZeRO 1 across ranks) the reduced gradients live in the optimizer's partitions,
        so the norm is read after the step and the loop counts it.
        """
        zero = self.cfg.train.zero_stage
        if zero >= 2 or (zero == 1 and self.world > 1):
            self.engine.step()
            norm = float(self.engine.get_global_grad_norm() or 0.0)
            return norm, bool(torch.isfinite(torch.tensor(norm)))
        if zero == 0 and self.world > 1:
            self.engine.buffered_allreduce_fallback(elements_per_buffer=REDUCE_BUCKET_ELEMENTS)
        norm = self.grad_norm()
        if not torch.isfinite(torch.tensor(norm)):
            self.zero_grad()
            return norm, False
        self.engine.step()
        return norm, True

    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])
