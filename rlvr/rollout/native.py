"""rollout.engine=native: rlvr's KV-cached CPU decoder, sampling straight from the policy's live
weights through the native layers (rlvr/native/layers.py).

Why it exists: at the sizes a CPU benchmark runs, `transformers.generate` spends ~5 ms per new
token on Python and dispatch (cache objects, mask building, logits processors) around ~0.5 ms of
matmuls, and `torch.multinomial` draws a V-wide exponential per row per token. This engine runs
the same decoder math as transformers' Llama / Qwen2 layers with fused QKV and gate-up matmuls,
one preallocated KV cache and inverse-CDF sampling (one uniform per row). Measured in
`rlvr bench`; exactness against the trainer's forward in tests/test_native_engine.py and, every
step, in the rollout/logp_diff_* metrics.

Supported: what rlvr/native/support.py accepts (LlamaForCausalLM and Qwen2ForCausalLM, full
attention, no LoRA). Anything else is rollout.engine=hf; rollout.engine=auto picks this engine
whenever it applies. lm-eval generates with it too (eval.backend=native, rlvr/evaluate/native_lm.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rlvr.config import RolloutConfig
from rlvr.engines import get_engine
from rlvr.native import kernels
from rlvr.native.layers import (
    Dims,
    apply_rope,
    final_logits,
    fused_layer_weights,
    prefix_layers,
    residual_linear,
    rms_norm,
    rope_tables,
    swiglu,
    unique_prompts,
)
from rlvr.rollout.base import (
    Rollouts,
    Turn,
    encode_prompts,
    left_pad,
    make_rollouts,
    row_uniforms,
    seeded_uniforms,
    stop_token_ids,
    turns_from,
)


def sample_tokens(
    logits: torch.Tensor, top_p: float, u: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one token per row from softmax(logits) (after top-p); return (tokens, log-probs).

    Inverse-CDF sampling: token = first index whose cumulative probability exceeds u·total,
    u ~ U[0, 1) (given per row [N, 1], else from torch's global RNG). A token of probability 0
    can never be drawn. Top-p keeps the smallest set of
    most likely tokens whose mass reaches top_p (at least one), as transformers' TopPLogitsWarper.
    """
    if top_p < 1.0:
        sorted_logits, order = logits.sort(-1)  # ascending
        drop_sorted = sorted_logits.softmax(-1).cumsum(-1) <= 1 - top_p
        drop_sorted[:, -1] = False
        logits = logits.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), float("-inf"))
    if u is None:
        u = torch.rand(len(logits), 1, device=logits.device)
    if top_p >= 1.0 and kernels.applies(logits):  # the same draw in one pass (same uniforms)
        return kernels.sample_rows(logits, u.contiguous())
    logp = F.log_softmax(logits, -1)
    cdf = logp.exp().cumsum(-1)
    u = u * cdf[:, -1:]
    tokens = torch.searchsorted(cdf, u, right=True).clamp_(max=cdf.shape[1] - 1).squeeze(-1)
    return tokens, logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


class NativeRolloutEngine:
    """Samples from the policy module's current weights on every call: nothing to sync."""

    def __init__(self, model, tok, cfg: RolloutConfig, bf16: bool = False):
        get_engine("native").check_model(model)  # the registry's support check, also for direct use
        self.model, self.tok, self.cfg = model, tok, cfg
        self.eos_ids = stop_token_ids(tok, model)
        # train.precision=bf16: bf16 copies of the projection weights; norms, RoPE, attention and
        # the residual stream stay fp32 (as under autocast)
        self.dtype = torch.bfloat16 if bf16 else torch.float32
        self.dims = Dims.of(model.config)
        self._finals: dict[tuple[str, ...], torch.Tensor] = {}

    def sync_weights(self) -> None:  # weights are read from the live module at every generate
        pass

    def close(self) -> None:  # holds nothing of its own
        pass

    def sleep(self) -> None:  # no accelerator memory to free
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
            qkv = F.linear(rms_norm(x, ln1, d.eps).to(dt), wqkv, bqkv).float()
            if fused:  # RoPE, the cache writes and the query layout in one kernel
                q = kernels.decode_qkv(qkv, cos, signed_sin, K[i, :, start], V[i, :, start], H, KV, D)
            else:
                qk = apply_rope(qkv[:, : (H + KV) * D].view(N, H + KV, D), cos[:, None], signed_sin[:, None])
                K[i, :, start].view(N, KV, D).copy_(qk[:, H:])  # one strided copy, no reshape
                V[i, :, start].view(N, KV, D).copy_(qkv[:, (H + KV) * D :].view(N, KV, D))
                q = qk[:, :H]
            # grouped-query attention without repeating K/V: H/KV queries per KV head
            q = q.reshape(N * KV, H // KV, D)
            scores = torch.baddbmm(attn_bias, q, K[i, :, :end].transpose(1, 2), alpha=D**-0.5)
            att = torch.bmm(scores.softmax(-1), V[i, :, :end]).view(N, H * D)
            x = residual_linear(x, att.to(dt), wo, bo)
            x = residual_linear(x, swiglu(F.linear(rms_norm(x, ln2, d.eps).to(dt), wgu, bgu)), wd, bd)
        return x

    def _stop_finals(self, stop: tuple[str, ...], vocab: int) -> torch.Tensor:
        """[vocab] bool: the tokens that can complete a stop string, their text holding one's
        last character (or, for a non-ASCII one, part of its bytes); cached per stop tuple."""
        if stop not in self._finals:
            texts = self.tok.batch_decode([[i] for i in range(vocab)], skip_special_tokens=True)
            marks = {s[-1] for s in stop}
            marks |= {"\ufffd"} if any(not m.isascii() for m in marks) else set()
            self._finals[stop] = torch.tensor([any(m in t for m in marks) for t in texts])
        return self._finals[stop]

    def _holds_stop(self, tokens: list[torch.Tensor], finals, stop, live) -> torch.Tensor:
        """[N] bool: live rows whose new text now holds a stop string, however it was tokenized
        (a BPE token may straddle the tag, '>\n'); only rows whose newest token can complete
        one are decoded, as the episode decodes them (special tokens skipped)."""
        out = torch.zeros_like(live)
        rows = (live & finals[tokens[-1]]).nonzero().squeeze(-1).tolist()
        if rows:
            texts = self.tok.batch_decode(torch.stack(tokens, 1)[rows].tolist(), skip_special_tokens=True)
            for r, text in zip(rows, texts, strict=True):
                out[r] = any(s in text for s in stop)
        return out

    @torch.no_grad()
    def generate(self, prompts: list[str], n: int, seeds: list[int]) -> Rollouts:
        ids, mask = encode_prompts(self.tok, prompts, self.cfg.max_prompt_len, n)
        dev = self.model.device
        uniforms = row_uniforms(seeds, n, self.cfg.max_new_tokens).to(dev)
        tokens, logps, _ = self.decode(
            ids.to(dev), mask.to(dev), self.cfg.max_new_tokens, self.cfg.temperature,
            self.cfg.top_p, uniforms,
        )  # fmt: skip
        return make_rollouts(self.tok, ids, mask, tokens.cpu(), logps.cpu(), self.eos_ids)

    @torch.no_grad()
    def extend(self, contexts: list[list[int]], seeds: list[int], max_new_tokens: int,
               temperature: float, stop: tuple[str, ...] = ()) -> list[Turn]:
        ids, mask = left_pad(contexts, self.tok.pad_token_id)
        dev = self.model.device
        tokens, logps, lengths = self.decode(
            ids.to(dev), mask.to(dev), max_new_tokens, temperature, self.cfg.top_p,
            seeded_uniforms(seeds, max_new_tokens).to(dev), stop,
        )  # fmt: skip
        return turns_from(tokens.cpu(), logps.cpu(), lengths.cpu())

    @torch.no_grad()
    def decode(
        self, ids, mask, max_new_tokens: int, temperature: float, top_p: float = 1.0,
        uniforms: torch.Tensor | None = None, stop: tuple[str, ...] = (),
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Continue left-padded `ids` by up to max_new_tokens; temperature 0 is greedy. Returns
        (tokens [N, T], their log-probs, each row's length [N]); a row ends at any of eos_ids or
        once its new text holds a `stop` string (then continues with padding), and decoding stops
        early once every row has. Token t of row i is drawn with uniforms[i, t]
        (rollout.base.row_uniforms), or from torch's global RNG when none are given."""
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
        lengths = torch.full((N,), T, dtype=torch.long, device=dev)
        eos = torch.tensor(self.eos_ids, device=dev)
        finals = self._stop_finals(stop, head.shape[0]).to(dev) if stop else None
        tokens, logps = [], []
        for t in range(T):
            if temperature == 0:
                tok = logits.argmax(-1)
                logp = F.log_softmax(logits, -1).gather(-1, tok[:, None]).squeeze(-1)
            else:
                u = None if uniforms is None else uniforms[:, t : t + 1]
                tok, logp = sample_tokens(logits / temperature, top_p, u)
            tok = tok.masked_fill(done, self.tok.pad_token_id)  # finished rows emit padding
            tokens.append(tok)
            logps.append(logp)
            ends = torch.isin(tok, eos)
            if finals is not None:
                ends |= self._holds_stop(tokens, finals, stop, ~done & ~ends)
            lengths.masked_fill_(ends & ~done, t + 1)
            done |= ends
            if t == T - 1 or bool(done.all()):
                break
            x = self._forward(
                embed(tok).float(), cos[t], signed_sin[t], layers, K, V, P + t,
                key_bias[..., : P + t + 1],
            )
            logits = final_logits(m, x, head)
        return torch.stack(tokens, 1), torch.stack(logps, 1), lengths.clamp_(max=len(tokens))
