"""The fused CPU kernels (rlvr/native/kernels) against torch's ops, forward and backward, and the
fallback to torch ops when no compiler works."""

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from rlvr.native import kernels
from rlvr.native.layers import _RMSNorm, swiglu

needs_kernels = pytest.mark.skipif(kernels.library() is None, reason="no C compiler for the kernels")


@needs_kernels
def test_swiglu_kernels_equal_torch_forward_and_backward():
    g = torch.Generator().manual_seed(0)
    gate_up = (torch.randn(3, 37, 2 * 96, generator=g) * 4).requires_grad_()  # silu's tails too
    grad = torch.randn(3, 37, 96, generator=g)
    out = swiglu(gate_up)
    out.backward(grad)
    ref_in = gate_up.detach().clone().requires_grad_()
    gate, up = ref_in.chunk(2, -1)
    ref = F.silu(gate) * up
    ref.backward(grad)
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(gate_up.grad, ref_in.grad, rtol=1e-5, atol=1e-6)
    with torch.no_grad():  # the decoder's path
        torch.testing.assert_close(swiglu(gate_up), ref, rtol=1e-6, atol=1e-6)


@needs_kernels
def test_rms_norm_kernels_equal_torch_forward_and_backward():
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(5, 23, 64, generator=g) * 3).requires_grad_()
    w = torch.randn(64, generator=g).requires_grad_()
    dy = torch.randn(5, 23, 64, generator=g)
    _RMSNorm.apply(x, w, 1e-6).backward(dy)
    x_ref, w_ref = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    ref = F.rms_norm(x_ref, (64,), w_ref, 1e-6)
    ref.backward(dy)
    with torch.no_grad():
        torch.testing.assert_close(_RMSNorm.apply(x, w, 1e-6), ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(w.grad, w_ref.grad, rtol=1e-5, atol=1e-5)


@needs_kernels
def test_rms_norm_weight_gradient_does_not_depend_on_thread_count():
    g = torch.Generator().manual_seed(2)
    x, w, dy = torch.randn(300, 128, generator=g), torch.randn(128, generator=g), torch.randn(300, 128, generator=g)
    _, rstd = kernels.rms_norm_forward(x, w, 1e-6, with_rstd=True)
    threads = torch.get_num_threads()
    try:
        results = []
        for n in (1, 2):
            torch.set_num_threads(n)
            results.append(kernels.rms_norm_backward(dy, x, w, rstd))
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(*results, strict=True))


def test_without_a_compiler_the_torch_ops_run_with_one_warning(tmp_path):
    code = (
        "import warnings, torch\n"
        "from rlvr.native import kernels\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    assert kernels.library() is None and not kernels.applies(torch.zeros(2))\n"
        "    kernels.library()\n"
        "assert len(caught) == 1 and 'using torch ops' in str(caught[0].message), caught\n"
        "from rlvr.native.layers import swiglu\n"
        "x = torch.randn(4, 8)\n"
        "assert torch.allclose(swiglu(x), torch.nn.functional.silu(x[:, :4]) * x[:, 4:])\n"
    )
    env = {"CC": "/bin/false", "RLVR_KERNEL_CACHE": str(tmp_path), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


@needs_kernels
def test_rope_kernel_equals_torch_forward_and_its_transpose_backward():
    g = torch.Generator().manual_seed(3)
    N, S, heads, D = 3, 5, 6, 16
    x = torch.randn(N, heads, S, D, generator=g).transpose(1, 2)  # strided, as in the update
    cos, sin = torch.randn(N, S, D, generator=g), torch.randn(N, S, D, generator=g)
    x_ref = x.clone().requires_grad_()
    ref = x_ref * cos[:, :, None] + x_ref.roll(D // 2, -1) * sin[:, :, None]
    dy = torch.randn(N, S, heads, D, generator=g)
    ref.backward(dy)
    out = kernels.rope(x, cos, sin, torch.empty(N, S, heads, D))
    torch.testing.assert_close(out, ref.detach(), rtol=1e-6, atol=1e-6)
    back = kernels.rope(dy, cos, sin, torch.empty(N, heads, S, D).transpose(1, 2), backward=True)
    torch.testing.assert_close(back, x_ref.grad, rtol=1e-6, atol=1e-6)


@needs_kernels
def test_sampling_kernel_draws_the_torch_path_tokens_from_the_same_uniforms():
    from rlvr.rollout.native import sample_tokens

    logits = torch.randn(64, 320, generator=torch.Generator().manual_seed(4)) * 3
    torch.manual_seed(5)
    tokens, logp = sample_tokens(logits, 1.0)
    lib = kernels.library()
    try:
        kernels._lib = None  # the torch path
        torch.manual_seed(5)
        ref_tokens, ref_logp = sample_tokens(logits, 1.0)
    finally:
        kernels._lib = lib
    assert torch.equal(tokens, ref_tokens)
    torch.testing.assert_close(logp, ref_logp, rtol=0, atol=2e-6)


@needs_kernels
def test_token_logprobs_kernel_equals_log_softmax_gather_and_its_gradient():
    from rlvr.update.scoring import _TokenLogprobs

    g = torch.Generator().manual_seed(6)
    logits = (torch.randn(4, 9, 320, generator=g) * 3).requires_grad_()
    target = torch.randint(0, 320, (4, 9), generator=g)
    weights = torch.randn(4, 9, generator=g)
    logp, entropy, collision = _TokenLogprobs.apply(logits, target, True)
    (logp * weights).sum().backward()
    ref_logits = logits.detach().clone().requires_grad_()
    ref_all = F.log_softmax(ref_logits, -1)
    ref = ref_all.gather(-1, target[..., None]).squeeze(-1)
    (ref * weights).sum().backward()
    p = ref_all.detach().exp()
    torch.testing.assert_close(logp, ref.detach(), rtol=0, atol=2e-6)
    torch.testing.assert_close(entropy, -(p * ref_all.detach()).sum(-1), rtol=1e-5, atol=2e-6)
    torch.testing.assert_close(collision, (p * p).sum(-1), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(logits.grad, ref_logits.grad, rtol=1e-5, atol=1e-7)
    assert _TokenLogprobs.apply(logits.detach(), target, False)[1] is None


@needs_kernels
def test_kernels_build_from_source_into_an_empty_cache(tmp_path):
    code = "from rlvr.native import kernels\nassert kernels.library() is not None\n"
    env = {**os.environ, "RLVR_KERNEL_CACHE": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert [p.suffix for p in tmp_path.iterdir()] == [".so"]  # no temporary file left behind


@needs_kernels
def test_prefix_attention_kernel_equals_sdpa_with_padding_and_grouped_heads():
    from rlvr.native.layers import _PrefixAttention

    g = torch.Generator().manual_seed(7)
    N, H, KV, S, P, D = 3, 4, 2, 5, 4, 8
    prompt_mask = torch.tensor([[1, 1, 1, 1], [0, 0, 1, 1], [0, 1, 1, 1]])
    q = torch.randn(N, H, S, D, generator=g, requires_grad=True)
    keys = torch.randn(N, KV, P + S, D, generator=g, requires_grad=True)
    values = torch.randn(N, KV, P + S, D, generator=g, requires_grad=True)
    d_out = torch.randn(N, S, H, D, generator=g)
    out = _PrefixAttention.apply(q, keys, values, prompt_mask, D**-0.5)
    out.backward(d_out)
    grads = [t.grad.clone() for t in (q, keys, values)]
    for t in (q, keys, values):
        t.grad = None
    visible = torch.cat([prompt_mask.bool()[:, None, :].expand(N, S, P), torch.ones(S, S).tril().bool().expand(N, S, S)], -1)
    bias = torch.zeros(N, 1, S, P + S).masked_fill(~visible[:, None], float("-inf"))
    ref = F.scaled_dot_product_attention(q, keys, values, attn_mask=bias, enable_gqa=True).transpose(1, 2)
    ref.backward(d_out)
    torch.testing.assert_close(out, ref.detach(), rtol=1e-5, atol=1e-6)
    for mine, t in zip(grads, (q, keys, values), strict=True):
        torch.testing.assert_close(mine, t.grad, rtol=1e-5, atol=1e-6)


@needs_kernels
def test_native_forward_gives_the_same_logits_and_gradients_without_the_kernels():
    """The torch-op paths (no compiler, RLVR_KERNELS=0, bf16 tensors) against the kernel paths,
    through the whole update forward: grouped heads, biases, left padding."""
    from test_native_engine import gqa_llama_with_biases, teacher_forcing_batch

    from rlvr.native.forward import completion_logits

    model, tok = gqa_llama_with_biases()
    prompt_ids, prompt_mask, completion, mask = teacher_forcing_batch(tok, model.config.vocab_size)

    def run():
        model.zero_grad()
        logits = completion_logits(model, prompt_ids, prompt_mask, completion)
        (F.log_softmax(logits, -1).gather(-1, completion[..., None]).squeeze(-1) * mask).sum().backward()
        return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    fused_logits, fused_grads = run()
    lib = kernels.library()
    try:
        kernels._lib = None
        torch_logits, torch_grads = run()
    finally:
        kernels._lib = lib
    torch.testing.assert_close(fused_logits, torch_logits, rtol=1e-5, atol=1e-5)
    for name, grad in torch_grads.items():
        torch.testing.assert_close(fused_grads[name], grad, rtol=1e-4, atol=1e-5, msg=lambda m, name=name: f"{name}: {m}")
