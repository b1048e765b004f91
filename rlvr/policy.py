"""The policy under training, wrapped in the real DeepSpeed engine.

CPU: one gloo process, a torch AdamW (no fused-Adam compile). GPU: `torchrun` over the node's
GPUs, ZeRO stage from config. Gradient accumulation is *unmanaged*: the loop calls backward on
each micro-batch loss (already divided by the mini-batch normaliser, so no 1/GAS rescaling) and
step() once per mini-batch, which keeps the algorithm's normaliser exact under micro-batching.
"""

from __future__ import annotations

import contextlib
import os

import torch
import torch.nn.functional as F

from rlvr import kernels
from rlvr.config import RunConfig
from rlvr.models import use_bf16_friendly_attention


def init_distributed() -> None:
    """Single-process defaults so DeepSpeed uses gloo/nccl, not MPI; torchrun sets real values."""
    import deepspeed

    launched = "MASTER_PORT" in os.environ  # by torchrun (or another launcher): use its rendezvous
    for key, value in (
        ("RANK", "0"),
        ("WORLD_SIZE", "1"),
        ("LOCAL_RANK", "0"),
        ("MASTER_ADDR", "127.0.0.1"),
    ):
        os.environ.setdefault(key, value)
    if not torch.cuda.is_available() and os.environ["WORLD_SIZE"] == "1":
        # One CPU process communicates with nobody: skip DeepSpeed's shared-memory allreduce op,
        # which otherwise compiles with gcc (~70 s) on first use in every fresh environment.
        import deepspeed.ops

        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    if torch.distributed.is_initialized():
        return
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if launched:
        deepspeed.init_distributed(dist_backend=backend)
    else:
        # port 0: the store's socket gets a free port when it binds. Picking a free port first
        # and binding it later raced with other processes on the node (EADDRINUSE under Slurm).
        deepspeed.init_distributed(
            dist_backend=backend, auto_mpi_discovery=False, init_method="tcp://127.0.0.1:0",
            rank=int(os.environ["RANK"]), world_size=int(os.environ["WORLD_SIZE"]),
        )


def shutdown_distributed() -> None:
    # torch 2.13 + gloo sometimes aborts at exit unless the group is destroyed first
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


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


class _TokenLogprobs(torch.autograd.Function):
    """log softmax(logits)[target] with the entropy and Σp² of every position (no gradient),
    through rlvr.kernels: one read of the [N, T, V] logits forward and one write backward,
    where log_softmax + gather + the statistics make ~5 passes and a zero-filled scatter."""

    @staticmethod
    def forward(ctx, logits, target, with_stats):
        lse, logp, entropy, collision = kernels.token_logp_forward(logits, target, with_stats)
        ctx.save_for_backward(logits, target, lse)
        if with_stats:
            ctx.mark_non_differentiable(entropy, collision)
        return logp, entropy, collision

    @staticmethod
    def backward(ctx, d_logp, *_):
        logits, target, lse = ctx.saved_tensors
        return kernels.token_logp_backward(logits, target, lse, d_logp.contiguous()), None, None


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
        if cfg.train.zero_stage == 0 and torch.distributed.get_world_size() == 1:
            # one rank averages with nobody: skip the flatten-allreduce-unflatten copy of every
            # gradient DeepSpeed makes at each step (ZeRO 1-3 reduce inside their optimizers)
            self.engine.enable_backward_allreduce = False
        # bf16 on CPU is autocast (the DeepSpeed bf16 optimizer path needs a GPU)
        self.autocast = cfg.train.precision == "bf16" and not torch.cuda.is_available()
        if self.autocast:
            use_bf16_friendly_attention(self.module)
        self.device = self.engine.device
        self.native_forward = self._use_native_forward(cfg.train.forward, self.module)

    def _use_native_forward(self, choice: str, module) -> bool:
        from rlvr.native_engine import picks_native, unsupported_reason

        reason = unsupported_reason(module)
        if reason is None and self.cfg.train.zero_stage == 3:
            reason = "ZeRO stage 3 partitions the weights (gathered only inside module forwards)"
        if reason is None and self.device.type != "cpu":
            reason = f"it runs on CPU only (device {self.device})"
        if choice == "native" and reason:
            raise ValueError(
                f"train.forward=native cannot score this model: {reason}; use train.forward=hf "
                "(auto falls back to hf by itself)"
            )
        return picks_native(choice, reason)

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
        """Per-token log-probs of the completion under `model` at the sampling temperature.

        Only the completion positions go through the LM head (`logits_to_keep`); position ids
        follow the left padding so they match generation. The native forward gives the same
        logits, computing each distinct prompt once.
        """
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.autocast):
            if self.native_forward:
                from rlvr.native_engine import completion_logits

                logits = completion_logits(
                    getattr(model, "module", model),  # the DeepSpeed engine's module
                    prompt_ids.to(self.device),
                    prompt_mask.to(self.device),
                    completion_ids.to(self.device),
                )
            else:
                ids = torch.cat([prompt_ids, completion_ids], 1).to(self.device)
                attn = torch.cat([prompt_mask, completion_mask.long()], 1).to(self.device)
                pos = (attn.cumsum(-1) - 1).clamp(min=0)
                keep = completion_ids.shape[1] + 1  # the last prompt position and the completion
                logits = model(
                    input_ids=ids, attention_mask=attn, position_ids=pos, logits_to_keep=keep
                ).logits[:, :-1]
        logits = logits.float()
        if temperature != 1.0:  # a division by 1 would still cost a pass, forward and backward
            logits = logits / temperature
        target = completion_ids.to(self.device).contiguous()
        if kernels.applies(logits) and target.dtype == torch.int64:  # one fused pass each way
            logp, entropy, collision = _TokenLogprobs.apply(logits, target, with_stats)
            out = {"logp": logp}
            if with_stats:
                out.update(entropy=entropy, p_token=logp.detach().exp(), collision=collision)
            return out
        logprobs = F.log_softmax(logits, -1)
        target = target.unsqueeze(-1)
        out = {"logp": logprobs.gather(-1, target).squeeze(-1)}
        if with_stats:
            with torch.no_grad():
                logp = logprobs.detach()
                probs = logp.exp().unsqueeze(-2)  # [N, T, 1, V]
                # per-position dot products as batched matmuls: no [N, T, V] product written
                out["entropy"] = -(probs @ logp.unsqueeze(-1)).flatten(-3)
                out["p_token"] = out["logp"].detach().exp()
                out["collision"] = (probs @ probs.transpose(-1, -2)).flatten(-3)  # Σ_v p_v²
        return out

    def zero_grad(self) -> None:
        self.engine.zero_grad()

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss, scale_wrt_gas=False)

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

        A non-finite gradient is dropped (no step) at ZeRO 0/1. At ZeRO 2/3 the gradients live in
        the optimizer's partitions, so the norm is read after the step and the loop counts it.
        """
        if self.cfg.train.zero_stage >= 2:
            self.engine.step()
            norm = float(self.engine.get_global_grad_norm() or 0.0)
            return norm, bool(torch.isfinite(torch.tensor(norm)))
        norm = self.grad_norm()
        if not torch.isfinite(torch.tensor(norm)):
            self.zero_grad()
            return norm, False
        self.engine.step()
        return norm, True

    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])
