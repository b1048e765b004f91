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
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

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
        c = model.config
        self.n_heads, self.n_kv = c.num_attention_heads, c.num_key_value_heads
        self.head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        self.eps = c.rms_norm_eps

    def sync_weights(self) -> None:  # weights are read from the live module at every generate
        pass

    def _weights(self) -> list[tuple]:
        """Per layer: norms (fp32) and fused projection weights/biases in the compute dtype."""

        def cast(*ts):
            ts = [t for t in ts if t is not None]
            return torch.cat(ts).detach().to(self.dtype) if ts else None

        layers = []
        for layer in self.model.model.layers:
            a, m = layer.self_attn, layer.mlp
            layers.append((
                layer.input_layernorm.weight.detach(),
                cast(a.q_proj.weight, a.k_proj.weight, a.v_proj.weight),
                cast(a.q_proj.bias, a.k_proj.bias, a.v_proj.bias),
                cast(a.o_proj.weight),
                cast(a.o_proj.bias),
                layer.post_attention_layernorm.weight.detach(),
                cast(m.gate_proj.weight, m.up_proj.weight),
                cast(m.gate_proj.bias, m.up_proj.bias),
                cast(m.down_proj.weight),
                cast(m.down_proj.bias),
            ))
        return layers

    def _rms(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, w.shape, w, self.eps)

    def _forward(self, x, cos, sin, layers, K, V, start: int, attn_bias) -> torch.Tensor:
        """Run the decoder layers over x [N, S, h] at cache slots start..start+S; return hidden.

        attn_bias [N, 1, S | 1, start+S] is 0 where a query may attend and -inf elsewhere.
        """
        N, S, _ = x.shape
        H, KV, D, dt = self.n_heads, self.n_kv, self.head_dim, self.dtype
        end = start + S
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # [N, 1, S, D]
        for i, (ln1, wqkv, bqkv, wo, bo, ln2, wgu, bgu, wd, bd) in enumerate(layers):
            qkv = F.linear(self._rms(x, ln1).to(dt), wqkv, bqkv).float()
            qk = qkv[..., : (H + KV) * D].view(N, S, H + KV, D).transpose(1, 2)
            qk = qk * cos + _rotate_half(qk) * sin  # RoPE on queries and keys in one pass
            q = qk[:, :H]
            K[i, :, :, start:end] = qk[:, H:]
            V[i, :, :, start:end] = qkv[..., (H + KV) * D :].view(N, S, KV, D).transpose(1, 2)
            if S == 1:  # grouped-query attention without repeating K/V: [N, KV, H/KV, D] queries
                q = q.reshape(N, KV, H // KV, D)
                scores = q @ K[i, :, :, :end].transpose(-1, -2) * D**-0.5 + attn_bias
                att = (scores.softmax(-1) @ V[i, :, :, :end]).reshape(N, 1, H * D)
            else:
                att = F.scaled_dot_product_attention(
                    q, K[i, :, :, :end], V[i, :, :, :end], attn_mask=attn_bias,
                    enable_gqa=H != KV,
                ).transpose(1, 2).reshape(N, S, H * D)
            x = x + F.linear(att.to(dt), wo, bo).float()
            gate, up = F.linear(self._rms(x, ln2).to(dt), wgu, bgu).chunk(2, -1)
            x = x + F.linear(F.silu(gate) * up, wd, bd).float()
        return x

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        m = self.model
        w = m.lm_head.weight.detach().to(self.dtype)
        return F.linear(self._rms(x, m.model.norm.weight.detach()).to(self.dtype), w).float()

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
        layers, embed, rotary = self._weights(), self.model.model.embed_tokens, self.model.model.rotary_emb
        dev = ids.device
        K = torch.zeros(L, N, self.n_kv, P + T, self.head_dim, device=dev)  # fp32: cheap here
        V = torch.zeros_like(K)
        # keys a query may see: real prompt tokens and every generated slot (filled in order)
        key_bias = torch.zeros(N, 1, 1, P + T, device=dev)
        key_bias[:, 0, 0, :P].masked_fill_(mask == 0, float("-inf"))
        causal = torch.ones(P, P, dtype=torch.bool, device=dev).tril()
        prompt_bias = key_bias[:, :, :, :P].expand(N, 1, P, P).masked_fill(~causal, float("-inf"))
        # a padding query sees only itself, so its (unused) row is finite instead of NaN
        prompt_bias = prompt_bias.masked_fill(torch.eye(P, dtype=torch.bool, device=dev), 0.0)

        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        x = embed(ids).float()
        cos, sin = rotary(x, pos)
        hidden = self._forward(x, cos, sin, layers, K, V, 0, prompt_bias)
        logits = self._logits(hidden[:, -1])
        next_pos = pos[:, -1:] + 1
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
            x = embed(tok[:, None]).float()
            cos, sin = rotary(x, next_pos)
            hidden = self._forward(x, cos, sin, layers, K, V, P + t, key_bias[..., : P + t + 1])
            logits = self._logits(hidden[:, -1])
            next_pos = next_pos + 1
        return torch.stack(tokens, 1), torch.stack(logps, 1)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, -1)
    return torch.cat((-x2, x1), -1)
