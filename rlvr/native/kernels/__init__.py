"""Fused fp32 CPU kernels (fused.c) for the native layers (rlvr/native/layers.py) and the token
log-probs (rlvr/update/scoring.py): RMSNorm, SwiGLU, RoPE, the update's attention over the prompt and the
log-probs with their statistics, forward and backward; the decoder's RoPE-and-cache step and
its sampling.

Why: at the sizes rlvr benchmarks on CPU, eager PyTorch's elementwise passes are memory-bound
(RMSNorm is ~6 of them, SwiGLU's backward 3 plus a concatenation of the gate and up gradients),
and eager mode cannot fuse them. Each kernel here reads its inputs once and writes its outputs
once. `rlvr bench` measures what they are worth; tests/test_kernels.py holds them to torch's
results (and gradients) within fp32 rounding.

How: compiled on first use with the system C compiler (`$CC`, else `cc`) into a cache keyed by the
source, the flags, the compiler and the CPU (`-march=native`), so a cluster's different nodes
build their own: `$RLVR_KERNEL_CACHE`, else ~/.cache/rlvr-bench/kernels. Parallel processes
build into temporary files and rename, so the first finisher wins and nobody reads half a file.
Where no compiler works the torch ops run instead (same math), with one warning; `RLVR_KERNELS=0`
turns the kernels off.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import subprocess
import tempfile
import warnings
from pathlib import Path

import torch  # first: the library's OpenMP symbols then resolve to torch's own runtime

SOURCE = Path(__file__).with_name("fused.c")
# the second set for compilers without OpenMP (Apple clang): vectorized, single-threaded
_COMMON = ["-O3", "-march=native", "-fno-math-errno", "-fno-trapping-math", "-ffinite-math-only",
           "-shared", "-fPIC"]
FLAG_SETS = (_COMMON + ["-fopenmp"], _COMMON + ["-fopenmp-simd"])
RMS_NORM_CHUNKS = 16  # fixed partial-sum ranges for dw: the same bits at any thread count

_lib: ctypes.CDLL | None = None
_loaded = False


def _cpu_id() -> str:
    try:  # -march=native: the CPU's feature flags decide the code
        flags = [line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")]
        return flags[0] if flags else platform.processor()
    except OSError:
        return platform.processor() or platform.machine()


def _build() -> Path:
    compiler = os.environ.get("CC", "cc")
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, check=True).stdout
    cache = Path(os.environ.get("RLVR_KERNEL_CACHE", Path.home() / ".cache" / "rlvr-bench" / "kernels"))
    errors = []
    for flags in FLAG_SETS:
        key = hashlib.sha256(
            "\n".join([SOURCE.read_text(), " ".join(flags), version, _cpu_id(), platform.machine()]).encode()
        ).hexdigest()[:16]
        target = cache / f"fused-{key}.so"
        if target.exists():
            return target
        cache.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache, suffix=".so.tmp")
        os.close(fd)
        done = subprocess.run([compiler, *flags, str(SOURCE), "-o", tmp, "-lm"], capture_output=True, text=True)
        if done.returncode == 0:
            os.replace(tmp, target)
            return target
        os.unlink(tmp)
        errors.append(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}")
    raise RuntimeError("; ".join(errors))


def _bind(lib: ctypes.CDLL) -> ctypes.CDLL:
    ptr, i64, i32, f32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int32, ctypes.c_float
    signatures = {  # argument types of each C function (all return void)
        "swiglu_forward": [ptr, ptr, i64, i64],
        "swiglu_backward": [ptr, ptr, ptr, i64, i64],
        "rms_norm_forward": [ptr, ptr, ptr, ptr, i64, i64, f32],
        "rms_norm_backward": [ptr] * 6 + [i64] * 3,
        "rope": [ptr, i64, i64, i64, ptr, ptr, ptr] + [i64] * 7 + [i32],
        "decode_qkv": [ptr, i64] + [ptr] * 5 + [i64] * 5,
        "sample_rows": [ptr] * 4 + [i64] * 2,
        "token_logp_forward": [ptr] * 6 + [i64] * 2 + [i32],
        "token_logp_backward": [ptr] * 5 + [i64] * 2,
        "prefix_attention_forward": [ptr, i64, i64] + [ptr] * 5 + [i64] * 6 + [f32],
        "prefix_attention_backward": [ptr, i64, i64] + [ptr] * 9 + [i64] * 6 + [f32],
    }
    for name, argtypes in signatures.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = argtypes, None
    return lib


def library() -> ctypes.CDLL | None:
    """The compiled kernels, or None (disabled, or no working compiler: warned once)."""
    global _lib, _loaded
    if not _loaded:
        _loaded = True
        if os.environ.get("RLVR_KERNELS", "1") != "0":
            try:
                _lib = _bind(ctypes.CDLL(str(_build())))
            except (OSError, RuntimeError, subprocess.CalledProcessError) as err:
                warnings.warn(f"rlvr: fused CPU kernels unavailable ({err}); using torch ops", stacklevel=2)
    return _lib


def applies(*tensors: torch.Tensor) -> bool:
    """Whether the kernels can take these tensors: fp32, contiguous, on CPU, and compiled."""
    return all(t.dtype == torch.float32 and t.device.type == "cpu" and t.is_contiguous() for t in tensors) and (
        library() is not None
    )


def swiglu_forward(gate_up: torch.Tensor) -> torch.Tensor:
    inter = gate_up.shape[-1] // 2
    out = gate_up.new_empty(*gate_up.shape[:-1], inter)
    library().swiglu_forward(gate_up.data_ptr(), out.data_ptr(), gate_up.numel() // (2 * inter), inter)
    return out


def swiglu_backward(grad: torch.Tensor, gate_up: torch.Tensor) -> torch.Tensor:
    inter = grad.shape[-1]
    d_gate_up = torch.empty_like(gate_up)
    library().swiglu_backward(grad.data_ptr(), gate_up.data_ptr(), d_gate_up.data_ptr(), grad.numel() // inter, inter)
    return d_gate_up


def rms_norm_forward(x: torch.Tensor, w: torch.Tensor, eps: float, with_rstd: bool):
    hidden = x.shape[-1]
    y = torch.empty_like(x)
    rstd = x.new_empty(*x.shape[:-1], 1) if with_rstd else None
    library().rms_norm_forward(
        x.data_ptr(), w.data_ptr(), y.data_ptr(), rstd.data_ptr() if with_rstd else None,
        x.numel() // hidden, hidden, eps,
    )
    return y, rstd


def rms_norm_backward(dy: torch.Tensor, x: torch.Tensor, w: torch.Tensor, rstd: torch.Tensor):
    hidden = x.shape[-1]
    dx = torch.empty_like(x)
    dw_partial = x.new_empty(RMS_NORM_CHUNKS, hidden)
    library().rms_norm_backward(
        dy.data_ptr(), x.data_ptr(), w.data_ptr(), rstd.data_ptr(), dx.data_ptr(), dw_partial.data_ptr(),
        x.numel() // hidden, hidden, RMS_NORM_CHUNKS,
    )
    return dx, dw_partial.sum(0)


def rope(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor, out: torch.Tensor, backward: bool = False):
    """out = RoPE(x) (its transpose when `backward`: the gradient) for x, out [N, S, heads, D]
    of any strides; cos, signed_sin contiguous [N, S, D]."""
    N, S, heads, D = x.shape
    library().rope(
        x.data_ptr(), *x.stride()[:3], cos.data_ptr(), signed_sin.data_ptr(), out.data_ptr(),
        *out.stride()[:3], N, S, heads, D, int(backward),
    )
    return out


def decode_qkv(qkv, cos, signed_sin, k_slot, v_slot, heads: int, kv_heads: int, head_dim: int):
    """One decode step: RoPE'd queries [N, heads, D] returned, RoPE'd keys and the values
    written into the cache slots k_slot, v_slot ([N·kv_heads, D] views, any row stride)."""
    N = qkv.shape[0]
    q = qkv.new_empty(N, heads, head_dim)
    library().decode_qkv(
        qkv.data_ptr(), qkv.stride(0), cos.data_ptr(), signed_sin.data_ptr(), q.data_ptr(),
        k_slot.data_ptr(), v_slot.data_ptr(), k_slot.stride(0), N, heads, kv_heads, head_dim,
    )
    return q


def sample_rows(logits: torch.Tensor, u: torch.Tensor):
    """Inverse-CDF draws from softmax(logits) [N, V] at uniforms u [N]: (tokens, log-probs)."""
    N, V = logits.shape
    tokens = torch.empty(N, dtype=torch.int64)
    logp = logits.new_empty(N)
    library().sample_rows(logits.data_ptr(), u.data_ptr(), tokens.data_ptr(), logp.data_ptr(), N, V)
    return tokens, logp


def token_logp_forward(logits: torch.Tensor, target: torch.Tensor, stats: bool):
    """For logits [..., V] and int64 target [...]: (lse, logp, entropy, collision), each [...];
    entropy and collision are None unless `stats`."""
    V = logits.shape[-1]
    lse, logp = logits.new_empty(target.shape), logits.new_empty(target.shape)
    entropy = logits.new_empty(target.shape) if stats else None
    collision = logits.new_empty(target.shape) if stats else None
    library().token_logp_forward(
        logits.data_ptr(), target.data_ptr(), lse.data_ptr(), logp.data_ptr(),
        entropy.data_ptr() if stats else None, collision.data_ptr() if stats else None,
        target.numel(), V, int(stats),
    )
    return lse, logp, entropy, collision


def token_logp_backward(logits: torch.Tensor, target: torch.Tensor, lse: torch.Tensor, grad: torch.Tensor):
    d_logits = torch.empty_like(logits)
    library().token_logp_backward(
        logits.data_ptr(), target.data_ptr(), lse.data_ptr(), grad.data_ptr(), d_logits.data_ptr(),
        target.numel(), logits.shape[-1],
    )
    return d_logits


def prefix_attention_forward(q, keys, values, prompt_mask, scale: float):
    """Attention of S completion positions over a left-padded prompt prefix of P keys and
    themselves (causal): q [N, H, S, D] (rows of D contiguous), keys and values [N, KV, P+S, D]
    contiguous, prompt_mask [N, P] int64. Returns (out [N, S, H, D], lse [N, H, S])."""
    N, H, S, D = q.shape
    KV, P = keys.shape[1], prompt_mask.shape[1]
    out, lse = q.new_empty(N, S, H, D), q.new_empty(N, H, S)
    library().prefix_attention_forward(
        q.data_ptr(), q.stride(0), q.stride(1), keys.data_ptr(), values.data_ptr(),
        prompt_mask.data_ptr(), out.data_ptr(), lse.data_ptr(), N, H, KV, S, P, D, scale,
    )
    return out, lse


def prefix_attention_backward(q, keys, values, prompt_mask, out, lse, d_out, scale: float):
    """Gradients (dq [N, H, S, D], d_keys, d_values [N, KV, P+S, D]) of prefix_attention_forward."""
    N, H, S, D = q.shape
    KV, P = keys.shape[1], prompt_mask.shape[1]
    dq, d_keys, d_values = q.new_empty(N, H, S, D), torch.empty_like(keys), torch.empty_like(values)
    library().prefix_attention_backward(
        q.data_ptr(), q.stride(0), q.stride(1), keys.data_ptr(), values.data_ptr(),
        prompt_mask.data_ptr(), out.data_ptr(), lse.data_ptr(), d_out.data_ptr(), dq.data_ptr(),
        d_keys.data_ptr(), d_values.data_ptr(), N, H, KV, S, P, D, scale,
    )
    return dq, d_keys, d_values
