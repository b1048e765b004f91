"""rlvr's native CPU decoder: KV-cached sampling straight from the policy's live weights.

Why it exists: at the sizes a CPU benchmark runs, `transformers.generate` spends ~5 ms per new
token on Python and dispatch (cache objects, mask building, logits processors) around ~0.5 ms of
matmuls, and `torch.multinomial` draws a V-wide exponential per row per token. This engine runs
the same decoder math as transformers' Llama / Qwen2 layers with fused QKV and gate-up matmuls,
one preallocated KV cache and inverse-CDF sampling (one uniform per row). Measured in
`rlvr bench`; exactness against the trainer's forward in tests/test_native_engine.py and, every
step, in the rollout/logp_diff_* metrics.

Supported: LlamaForCausalLM and Qwen2ForCausalLM (RMSNorm, any RoPE type via the model's own
rotary module, SwiGLU, grouped-query attention, attention/MLP biases), full attention, no LoRA.
Anything else is rollout.engine=hf; rollout.engine=auto picks this engine whenever it applies.

The same layer math scores completions for the update (`completion_logits`, train.forward=native):
with autograd, and with each distinct prompt run once however many completions share it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from rlvr import kernels
from rlvr.config import RolloutConfig
from rlvr.rollout import Rollouts, encode_prompts, make_rollouts

SUPPORTED_MODEL_TYPES = ("llama", "qwen2")


def unsupported_reason(model) -> str | None:
    """Why the native decoder cannot run `model` (None when it can)."""
    if hasattr(model, "peft_config"):
        return "LoRA adapters are attached (the decoder reads plain weights)"
    config = model.config
    if config.model_type not in SUPPORTED_MODEL_TYPES:
        return f"model type {config.model_type!r} is not one of {list(SUPPORTED_MODEL_TYPES)}"
    if config.hidden_act != "silu":
        return f"hidden_act={config.hidden_act!r} (the decoder implements SwiGLU with silu)"
    layer_types = getattr(config, "layer_types", None) or ["full_attention"]
    if any(t != "full_attention" for t in layer_types):
        return "sliding-window attention layers"
    return None


def picks_native(choice: str, reason: str | None) -> bool:
    """A setting's auto|native|hf|vllm choice → whether the native path runs: `native` always (the
    caller reports `reason` as an error), `auto` when nothing stands in the way (reason is None)."""
    return choice == "native" or (choice == "auto" and reason is None)


def sample_tokens(logits: torch.Tensor, top_p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one token per row from softmax(logits) (after top-p); return (tokens, log-probs).

    Inverse-CDF sampling: token = first index whose cumulative probability exceeds u·total,
    u ~ U[0, 1). A token of probability 0 can never be drawn. Top-p keeps the smallest set of
    most likely tokens whose mass reaches top_p (at least one), as transformers' TopPLogitsWarper.
    """
    if top_p < 1.0:
        sorted_logits, order = logits.sort(-1)  # ascending
        drop_sorted = sorted_logits.softmax(-1).cumsum(-1) <= 1 - top_p
        drop_sorted[:, -1] = False
        logits = logits.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), float("-inf"))
    elif kernels.applies(logits):  # the same draw in one pass (same uniforms)
        return kernels.sample_rows(logits, torch.rand(len(logits), 1))
    logp = F.log_softmax(logits, -1)
    cdf = logp.exp().cumsum(-1)
    u = torch.rand(len(cdf), 1, device=cdf.device) * cdf[:, -1:]
    tokens = torch.searchsorted(cdf, u, right=True).clamp_(max=cdf.shape[1] - 1).squeeze(-1)
    return tokens, logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


class NativeRolloutEngine:
    """Samples from the policy module's current weights on every call: nothing to sync."""

    def __init__(self, model, tok, cfg: RolloutConfig, bf16: bool = False):
        reason = unsupported_reason(model)
        if reason:
            raise ValueError(
                f"the native decoder cannot run this model: {reason}; use rollout.engine=hf / "
                "eval.backend=hf (auto falls back to hf by itself)"
            )
        self.model, self.tok, self.cfg = model, tok, cfg
        # train.precision=bf16: bf16 copies of the projection weights; norms, RoPE, attention and
        # the residual stream stay fp32 (as under autocast)
        self.dtype = torch.bfloat16 if bf16 else torch.float32
        self.dims = Dims.of(model.config)

    def sync_weights(self) -> None:  # weights are read from the live module at every generate
        pass

    def _forward(self, x, cos, signed_sin, layers, K, V, start: int, attn_bias) -> torch.Tensor:
        """One new token per row: run the decoder layers over x [N, h] at cache slot `start`.

        K, V are [layers, N·KV, slots, D]; attn_bias [N·KV, 1, start+1] is 0 where the query may
        attend and -inf elsewhere. Every op here runs once per layer per token, so the math is
        folded into as few kernels as it goes: the 1/√D scale and the mask into one baddbmm, and
        (fp32) the residual adds into the projections' addmm.
        """
        N = x.shape[0]
        d, dt = self.dims, self.dtype
        H, KV, D = d.heads, d.kv_heads, d.head_dim
        end = start + 1
        fused = kernels.applies(cos, signed_sin)
        for i, (ln1, wqkv, bqkv, wo, bo, ln2, wgu, bgu, wd, bd) in enumerate(layers):
            qkv = F.linear(_rms(x, ln1, d.eps).to(dt), wqkv, bqkv).float()
            if fused:  # RoPE, the cache writes and the query layout in one kernel
                q = kernels.decode_qkv(qkv, cos, signed_sin, K[i, :, start], V[i, :, start], H, KV, D)
            else:
                qk = _rope(qkv[:, : (H + KV) * D].view(N, H + KV, D), cos[:, None], signed_sin[:, None])
                K[i, :, start].view(N, KV, D).copy_(qk[:, H:])  # one strided copy, no reshape
                V[i, :, start].view(N, KV, D).copy_(qkv[:, (H + KV) * D :].view(N, KV, D))
                q = qk[:, :H]
            # grouped-query attention without repeating K/V: H/KV queries per KV head
            q = q.reshape(N * KV, H // KV, D)
            scores = torch.baddbmm(attn_bias, q, K[i, :, :end].transpose(1, 2), alpha=D**-0.5)
            att = torch.bmm(scores.softmax(-1), V[i, :, :end]).view(N, H * D)
            x = _residual_linear(x, att.to(dt), wo, bo)
            x = _residual_linear(x, _swiglu(F.linear(_rms(x, ln2, d.eps).to(dt), wgu, bgu)), wd, bd)
        return x

    @torch.no_grad()
    def generate(self, prompts: list[str], n: int, seed: int) -> Rollouts:
        ids, mask = encode_prompts(self.tok, prompts, self.cfg.max_prompt_len, n)
        torch.manual_seed(seed)
        dev = self.model.device
        tokens, logps = self.decode(
            ids.to(dev), mask.to(dev), self.cfg.max_new_tokens, self.cfg.temperature, self.cfg.top_p
        )
        return make_rollouts(self.tok, ids, mask, tokens.cpu(), logps.cpu())

    @torch.no_grad()
    def decode(
        self, ids, mask, max_new_tokens: int, temperature: float, top_p: float = 1.0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Continue left-padded `ids` by up to max_new_tokens; temperature 0 is greedy. Returns
        (tokens [N, T], their log-probs); a row that emitted EOS continues with padding, and
        decoding stops early once every row has. Samples from torch's global RNG."""
        N, P = ids.shape
        T, L = max_new_tokens, len(self.model.model.layers)
        d, m = self.dims, self.model
        layers, embed = fused_layer_weights(m, self.dtype), m.model.embed_tokens
        head = m.lm_head.weight.to(self.dtype)
        dev = ids.device
        # fp32 (cheap here); empty, not zeros: a slot is written before any query reads it
        K = torch.empty(L, N, d.kv_heads, P + T, d.head_dim, device=dev)
        V = torch.empty_like(K)
        # the prompts once each (rows repeat every prompt G times), then copied into every row
        unique_ids, unique_mask, row_of = unique_prompts(ids, mask)
        hidden, prefix_kv = prefix_layers(m, layers, unique_ids, unique_mask, d)
        for i, (k, v) in enumerate(prefix_kv):
            K[i, :, :, :P], V[i, :, :, :P] = k[row_of], v[row_of]
        K, V = K.flatten(1, 2), V.flatten(1, 2)  # [L, N·KV, slots, D]: batched matmuls per KV head
        logits = final_logits(m, hidden[row_of, -1], head)
        # keys a query may see: real prompt tokens and every generated slot (filled in order)
        key_bias = torch.zeros(N, d.kv_heads, 1, P + T, device=dev)
        key_bias[..., :P].masked_fill_((mask == 0)[:, None, None, :], float("-inf"))
        key_bias = key_bias.flatten(0, 1)
        positions = mask.sum(-1, keepdim=True) + torch.arange(T, device=dev)
        cos, signed_sin = rope_tables(m, hidden, positions)  # [N, T, D]: every step's at once
        cos, signed_sin = cos.transpose(0, 1).contiguous(), signed_sin.transpose(0, 1).contiguous()
        done = torch.zeros(N, dtype=torch.bool, device=dev)
        tokens, logps = [], []
        for t in range(T):
            if temperature == 0:
                tok = logits.argmax(-1)
                logp = F.log_softmax(logits, -1).gather(-1, tok[:, None]).squeeze(-1)
            else:
                tok, logp = sample_tokens(logits / temperature, top_p)
            tok = tok.masked_fill(done, self.tok.pad_token_id)  # finished rows emit padding
            tokens.append(tok)
            logps.append(logp)
            done |= tok == self.tok.eos_token_id
            if t == T - 1 or bool(done.all()):
                break
            x = self._forward(
                embed(tok).float(), cos[t], signed_sin[t], layers, K, V, P + t,
                key_bias[..., : P + t + 1],
            )
            logits = final_logits(m, x, head)
        return torch.stack(tokens, 1), torch.stack(logps, 1)


# ---- layer math shared by the decoder and the trainer's forward ---------------------------------
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


def _residual_linear(x: torch.Tensor, a: torch.Tensor, w: torch.Tensor, b) -> torch.Tensor:
    """x + a·wᵀ (+ b) for 2-D x: one addmm when everything is fp32; under bf16 weights the add
    promotes the bf16 product to fp32 itself (what `.float()` and then `+` would do, one op less)."""
    if x.dtype == a.dtype == w.dtype:
        out = torch.addmm(x, a, w.t())
        return out if b is None else out.add_(b)
    return x + F.linear(a, w, b)


def _rms(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    if torch.is_grad_enabled():
        return _RMSNorm.apply(x, w, eps)
    if kernels.applies(x, w):
        return kernels.rms_norm_forward(x, w, eps, with_rstd=False)[0]
    return F.rms_norm(x, w.shape, w, eps)


class _RMSNorm(torch.autograd.Function):
    """F.rms_norm with a hand-written backward: autograd differentiates torch's CPU rms_norm
    through its composite ops (pow, mean, rsqrt and two broadcasting muls, ~10 passes over x).
    fp32 on CPU: one fused kernel each way (rlvr.kernels); otherwise torch's forward kernel
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
    (rlvr.kernels); otherwise three elementwise passes written straight into the gradient."""

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


def _swiglu(gate_up: torch.Tensor) -> torch.Tensor:
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
    rotate_half(x)·sin = roll(x)·[-sin1, sin2] and `_rope` needs 3 ops instead of 5."""
    cos, sin = model.model.rotary_emb(x, positions)
    half = sin.shape[-1] // 2
    return cos, torch.cat([-sin[..., :half], sin[..., half:]], -1)


def _rope(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
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
    fused kernel both ways (rlvr.kernels): torch's CPU flash attention spends most of its time on
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
    qkv = F.linear(_rms(x, ln1, d.eps).to(wqkv.dtype), wqkv, bqkv).float()
    if kernels.applies(qkv, cos, signed_sin):
        q, k, v = _AttentionHeads.apply(qkv, cos, signed_sin, H, KV, D)
    else:
        # split, not slices: a slice's backward fills a zero tensor of the whole input first
        qk, v = qkv.split([(H + KV) * D, KV * D], -1)
        qk = _rope(qk.view(N, S, H + KV, D).transpose(1, 2), cos.unsqueeze(1), signed_sin.unsqueeze(1))
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
    gate_up = F.linear(_rms(x, ln2, d.eps).to(wgu.dtype), wgu, bgu)
    return x + F.linear(_swiglu(gate_up), wd, bd).float(), k, v


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
    return F.linear(_rms(x, m.model.norm.weight, m.config.rms_norm_eps).to(w.dtype), w).float()


def completion_logits(model, prompt_ids, prompt_mask, completion_ids) -> torch.Tensor:
    """Teacher-forced logits [N, T, V] predicting completion_ids after left-padded prompts: what
    the transformers forward over the concatenation gives (position ids following the padding),
    with autograd. Rows sharing a prompt share one pass over it; its keys, values and last hidden
    state are indexed into every row, so their gradients add up over the rows."""
    d = Dims.of(model.config)
    S = completion_ids.shape[1] - 1  # the last completion token predicts nothing scored here
    dev = prompt_ids.device
    layers = fused_layer_weights(model)
    unique_ids, unique_mask, row_of = unique_prompts(prompt_ids, prompt_mask)
    hidden, prefix_kv = prefix_layers(model, layers, unique_ids, unique_mask, d)
    # the last prompt position predicts the first completion token
    first = hidden[:, -1:].index_select(0, row_of)
    if S == 0:
        return final_logits(model, first)
    x = model.model.embed_tokens(completion_ids[:, :S]).float()
    positions = prompt_mask.sum(-1, keepdim=True) + torch.arange(S, device=dev)
    cos, signed_sin = rope_tables(model, x, positions)
    key_mask = prompt_mask.to(torch.int64).contiguous()
    # index_select, not k[row_of]: its backward (index_add_) sums the rows' gradients in a fixed
    # order, while advanced indexing's accumulating index_put_ varies run to run on CPU
    for w, (k, v) in zip(layers, prefix_kv, strict=True):
        past = (k.index_select(0, row_of), v.index_select(0, row_of))
        x, _, _ = decoder_layer(x, w, cos, signed_sin, None, d, past=past, prompt_mask=key_mask)
    x = torch.cat([first, x], 1)
    return final_logits(model, x)
