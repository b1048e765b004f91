"""The Llama / Qwen2 decoder layers as plain functions of the model's own weights, shared by
rlvr's rollout decoder (rlvr/rollout/native.py: no grad, one new token per row against a KV cache)
and the update forward (rlvr/native/forward.py: autograd, each distinct prompt run once).

Same math as transformers' LlamaDecoderLayer / Qwen2DecoderLayer (RMSNorm, RoPE of any type
through the model's own rotary module, SwiGLU, grouped-query attention, attention/MLP biases),
with fused QKV and gate-up matmuls and hand-written backwards where autograd would make extra
passes (`_RMSNorm`, `_SwiGLU`, `_AttentionHeads`, `_PrefixAttention`). fp32 on CPU goes through
the fused kernels of rlvr/native/kernels where they build; the torch ops run otherwise (same math).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from rlvr.native import kernels


@dataclass(frozen=True)
class Dims:
    heads: int
    kv_heads: int
    head_dim: int
    eps: float

    @classmethod
    def of(cls, c) -> Dims:
        head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        return cls(c.num_attention_heads, c.num_key_value_heads, head_dim, c.rms_norm_eps)


def fused_layer_weights(model, dtype: torch.dtype | None = None) -> list[tuple]:
    """Per layer: norms and fused QKV / gate-up projection weights and biases, cast to `dtype`
    (None keeps the parameters' own). Differentiable: gradients flow back to each projection."""

    def fuse(*ts):
        ts = [t for t in ts if t is not None]
        if not ts:
            return None
        w = torch.cat(ts) if len(ts) > 1 else ts[0]
        return w if dtype is None else w.to(dtype)

    layers = []
    for layer in model.model.layers:
        a, mlp = layer.self_attn, layer.mlp
        layers.append((
            layer.input_layernorm.weight,
            fuse(a.q_proj.weight, a.k_proj.weight, a.v_proj.weight),
            fuse(a.q_proj.bias, a.k_proj.bias, a.v_proj.bias),
            fuse(a.o_proj.weight),
            fuse(a.o_proj.bias),
            layer.post_attention_layernorm.weight,
            fuse(mlp.gate_proj.weight, mlp.up_proj.weight),
            fuse(mlp.gate_proj.bias, mlp.up_proj.bias),
            fuse(mlp.down_proj.weight),
            fuse(mlp.down_proj.bias),
        ))
    return layers


def residual_linear(x: torch.Tensor, a: torch.Tensor, w: torch.Tensor, b) -> torch.Tensor:
    """x + a·wᵀ (+ b) for 2-D x: one addmm when everything is fp32; under bf16 weights the add
    promotes the bf16 product to fp32 itself (what `.float()` and then `+` would do, one op less)."""
    if x.dtype == a.dtype == w.dtype:
        out = torch.addmm(x, a, w.t())
        return out if b is None else out.add_(b)
    return x + F.linear(a, w, b)


def rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    if torch.is_grad_enabled():
        return _RMSNorm.apply(x, w, eps)
    if kernels.applies(x, w):
        return kernels.rms_norm_forward(x, w, eps, with_rstd=False)[0]
    return F.rms_norm(x, w.shape, w, eps)


class _RMSNorm(torch.autograd.Function):
    """F.rms_norm with a hand-written backward: autograd differentiates torch's CPU rms_norm
    through its composite ops (pow, mean, rsqrt and two broadcasting muls, ~10 passes over x).
    fp32 on CPU: one fused kernel each way (rlvr.native.kernels); otherwise torch's forward kernel
    (same numbers as F.rms_norm) and a backward of 6 passes, two of them matrix-vector products.

    With P = dy·x and r = rstd per row: dw = Pᵀr, dx = r·(dy·w) − x·r³·(P·w)/h.
    """

    @staticmethod
    def forward(ctx, x, w, eps):
        if kernels.applies(x, w):
            y, rstd = kernels.rms_norm_forward(x, w, eps, with_rstd=True)
        else:
            y, rstd = torch.ops.aten._fused_rms_norm(x, [x.shape[-1]], w, eps)
        ctx.save_for_backward(x, w, rstd)
        return y

    @staticmethod
    def backward(ctx, dy):
        x, w, rstd = ctx.saved_tensors
        if kernels.applies(dy, x, w, rstd):
            dx, dw = kernels.rms_norm_backward(dy, x, w, rstd)
            return dx, dw if ctx.needs_input_grad[1] else None, None
        h = x.shape[-1]
        dy2, x2, r = dy.reshape(-1, h), x.reshape(-1, h), rstd.reshape(-1)
        p = dy2 * x2
        dw = torch.mv(p.t(), r).to(w.dtype) if ctx.needs_input_grad[1] else None
        k = torch.mv(p, w.to(p.dtype)).mul_(r.pow(3)).div_(h)
        dx = (dy2 * w).mul_(r.unsqueeze(-1)).addcmul_(x2, k.unsqueeze(-1), value=-1)
        return dx.view_as(x).to(x.dtype), dw, None


class _SwiGLU(torch.autograd.Function):
    """silu(gate)·up over the fused gate-up projection [..., 2I], differentiated into one
    [..., 2I] gradient: autograd's chunk backward would concatenate the two halves' gradients
    (a copy of the layer's largest activation). fp32 on CPU: one fused kernel each way
    (rlvr.native.kernels); otherwise three elementwise passes written straight into the gradient."""

    @staticmethod
    def forward(ctx, gate_up):
        ctx.fused = kernels.applies(gate_up)
        if ctx.fused:
            ctx.save_for_backward(gate_up)
            return kernels.swiglu_forward(gate_up)
        gate, up = gate_up.chunk(2, -1)
        act = F.silu(gate)
        ctx.save_for_backward(gate_up, act)
        return act * up

    @staticmethod
    def backward(ctx, grad):
        if ctx.fused and kernels.applies(grad):
            return kernels.swiglu_backward(grad, ctx.saved_tensors[0])
        gate_up, *saved = ctx.saved_tensors
        gate, up = gate_up.chunk(2, -1)
        act = saved[0] if saved else F.silu(gate)
        out = torch.empty_like(gate_up)
        d_gate, d_up = out.chunk(2, -1)
        torch.mul(grad, act, out=d_up)
        torch.mul(grad, up, out=d_gate)
        # silu'(gate)·(grad·up), written over its own input (same element, same thread)
        torch.ops.aten.silu_backward.grad_input(d_gate, gate, grad_input=d_gate)
        return out


def swiglu(gate_up: torch.Tensor) -> torch.Tensor:
    if torch.is_grad_enabled():
        return _SwiGLU.apply(gate_up)
    if kernels.applies(gate_up):
        return kernels.swiglu_forward(gate_up)
    gate, up = gate_up.chunk(2, -1)
    return F.silu(gate) * up


def rope_tables(model, x: torch.Tensor, positions: torch.Tensor):
    """(cos, signed sin) [N, S, D] at `positions` from the model's own rotary module (any RoPE
    type). transformers rotates by x·cos + rotate_half(x)·sin with rotate_half(x) = [-x2, x1];
    both halves of sin are equal (sin = sin([f, f])), so
    rotate_half(x)·sin = roll(x)·[-sin1, sin2] and `apply_rope` needs 3 ops instead of 5."""
    cos, sin = model.model.rotary_emb(x, positions)
    half = sin.shape[-1] // 2
    return cos, torch.cat([-sin[..., :half], sin[..., half:]], -1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    return torch.addcmul(x * cos, x.roll(x.shape[-1] // 2, -1), signed_sin)


class _AttentionHeads(torch.autograd.Function):
    """The fused projection qkv [N, S, (H+2KV)·D] → RoPE'd queries [N, H, S, D] and keys
    [N, KV, S, D] and the values [N, KV, S, D], with the fused RoPE kernel both ways: the
    backward writes every head's gradient straight into one [N, S, (H+2KV)·D] tensor, where
    autograd would concatenate q with k and then qk with v."""

    @staticmethod
    def forward(ctx, qkv, cos, signed_sin, H, KV, D):
        N, S, _ = qkv.shape
        heads = qkv.view(N, S, H + 2 * KV, D)
        qk = qkv.new_empty(N, H + KV, S, D)
        kernels.rope(heads[:, :, : H + KV], cos, signed_sin, qk.transpose(1, 2))
        v = heads[:, :, H + KV :].transpose(1, 2).contiguous()
        ctx.save_for_backward(cos, signed_sin)
        ctx.dims = (H, KV, D)
        return qk[:, :H], qk[:, H:], v

    @staticmethod
    def backward(ctx, dq, dk, dv):
        cos, signed_sin = ctx.saved_tensors
        H, KV, D = ctx.dims
        N, S = cos.shape[:2]
        d_heads = cos.new_empty(N, S, H + 2 * KV, D)
        for grad, lo, hi in ((dq, 0, H), (dk, H, H + KV)):
            if grad is None:
                d_heads[:, :, lo:hi].zero_()
            else:
                grad = grad.float().transpose(1, 2)  # [N, S, heads, D]
                grad = grad if grad.stride(-1) == 1 else grad.contiguous()
                kernels.rope(grad, cos, signed_sin, d_heads[:, :, lo:hi], backward=True)
        if dv is None:
            d_heads[:, :, H + KV :].zero_()
        else:
            d_heads[:, :, H + KV :].copy_(dv.transpose(1, 2))
        return d_heads.view(N, S, -1), None, None, None, None, None


class _PrefixAttention(torch.autograd.Function):
    """Completion positions attending to their prompt prefix and causally to themselves, as a
    fused kernel both ways (rlvr.native.kernels): torch's CPU flash attention spends most of its time on
    blocking overhead at these lengths (tens of positions). Returns [N, S, H, D]."""

    @staticmethod
    def forward(ctx, q, keys, values, prompt_mask, scale):
        out, lse = kernels.prefix_attention_forward(q, keys, values, prompt_mask, scale)
        ctx.save_for_backward(q, keys, values, prompt_mask, out, lse)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx, d_out):
        dq, d_keys, d_values = kernels.prefix_attention_backward(
            *ctx.saved_tensors, d_out.contiguous(), ctx.scale
        )
        return dq, d_keys, d_values, None, None


def _prefix_bias(prompt_mask: torch.Tensor, S: int) -> torch.Tensor:
    """[N, 1, S, P+S]: 0 where a completion position may attend (its prompt's real tokens, itself
    and the positions before it), -inf elsewhere — what _PrefixAttention reads from the mask."""
    N, P = prompt_mask.shape
    visible = torch.cat([
        (prompt_mask != 0)[:, None, :].expand(N, S, P),
        torch.ones(S, S, dtype=torch.bool, device=prompt_mask.device).tril().expand(N, S, S),
    ], -1)
    return torch.zeros(N, 1, S, P + S, device=prompt_mask.device).masked_fill(~visible[:, None], float("-inf"))


def decoder_layer(x, weights, cos, signed_sin, attn_bias, d: Dims, past=None, prompt_mask=None):
    """One decoder layer over x [N, S, h] (fp32 residual stream). Without `past`: causal over
    itself under attn_bias [N, 1, S, S]. With `past` (K, V of a left-padded prompt, [N, KV, P, D])
    and its prompt_mask [N, P] instead of a bias: over the prompt's real tokens and causally over
    itself (the fused kernel, or SDPA under the bias _prefix_bias derives).
    Returns (x, k, v) with this layer's keys (after RoPE) and values of the S positions."""
    ln1, wqkv, bqkv, wo, bo, ln2, wgu, bgu, wd, bd = weights
    N, S, _ = x.shape
    H, KV, D = d.heads, d.kv_heads, d.head_dim
    qkv = F.linear(rms_norm(x, ln1, d.eps).to(wqkv.dtype), wqkv, bqkv).float()
    if kernels.applies(qkv, cos, signed_sin):
        q, k, v = _AttentionHeads.apply(qkv, cos, signed_sin, H, KV, D)
    else:
        # split, not slices: a slice's backward fills a zero tensor of the whole input first
        qk, v = qkv.split([(H + KV) * D, KV * D], -1)
        qk = apply_rope(qk.view(N, S, H + KV, D).transpose(1, 2), cos.unsqueeze(1), signed_sin.unsqueeze(1))
        q, k = qk.split([H, KV], 1)  # RoPE on queries and keys in one pass
        v = v.view(N, S, KV, D).transpose(1, 2)
    keys, values = k, v
    if past is not None:
        keys, values = torch.cat([past[0], k], 2), torch.cat([past[1], v], 2)
    if past is not None and kernels.applies(keys, values) and q.stride(-2) == D:
        att = _PrefixAttention.apply(q, keys, values, prompt_mask, D**-0.5).view(N, S, H * D)
    else:
        if past is not None:
            attn_bias = _prefix_bias(prompt_mask, S)
        # fp32 attention even under bf16 autocast: torch's CPU flash-attention backward is ~2.5x
        # slower in bf16
        with torch.autocast(x.device.type, enabled=False):
            att = F.scaled_dot_product_attention(
                q, keys, values, attn_mask=attn_bias, enable_gqa=H != KV
            ).transpose(1, 2).reshape(N, S, H * D)
    x = x + F.linear(att.to(wo.dtype), wo, bo).float()
    gate_up = F.linear(rms_norm(x, ln2, d.eps).to(wgu.dtype), wgu, bgu)
    return x + F.linear(swiglu(gate_up), wd, bd).float(), k, v


def unique_prompts(ids: torch.Tensor, mask: torch.Tensor):
    """(ids, mask) of each distinct left-padded prompt, and for every row the index of its own."""
    rows, row_of = torch.unique(torch.cat([ids, mask], 1), dim=0, return_inverse=True)
    return rows[:, : ids.shape[1]], rows[:, ids.shape[1] :], row_of


def prefix_layers(model, layers, ids, mask, d: Dims):
    """Causal pass over left-padded prompts: (last layer's hidden [U, P, h], per layer (K, V))."""
    U, P = ids.shape
    dev = ids.device
    x = model.model.embed_tokens(ids).float()
    cos, signed_sin = rope_tables(model, x, (mask.cumsum(-1) - 1).clamp(min=0))
    allowed = torch.ones(P, P, dtype=torch.bool, device=dev).tril() & mask[:, None, None, :].bool()
    # a padding query sees only itself, so its (unused) row is finite instead of NaN
    allowed = allowed | torch.eye(P, dtype=torch.bool, device=dev)
    bias = torch.zeros(U, 1, P, P, device=dev).masked_fill(~allowed, float("-inf"))
    kv = []
    for w in layers:
        x, k, v = decoder_layer(x, w, cos, signed_sin, bias, d)
        kv.append((k, v))
    return x, kv


def final_logits(model, x: torch.Tensor, head: torch.Tensor | None = None) -> torch.Tensor:
    """fp32 logits from the last hidden state; `head` replaces the LM head weight (the decoder
    passes its bf16 copy, cast once per generate rather than once per token)."""
    m = model
    w = m.lm_head.weight if head is None else head
    return F.linear(rms_norm(x, m.model.norm.weight, m.config.rms_norm_eps).to(w.dtype), w).float()


