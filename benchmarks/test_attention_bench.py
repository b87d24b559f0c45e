"""Fused Triton attention against eager PyTorch, forward and forward+backward.

Shapes are the paper's IMDB encoder (B 128, H 4, L 256, D 32, with a padding mask) and its last
layer computing only the position the loss reads (Lq = 1 against 256 keys). Competitors:
``attention_reference`` (eager PyTorch, fp32 math, materialises the B*H*Lq*Lk scores) and
``torch.nn.functional.scaled_dot_product_attention`` (PyTorch's own fused kernels where they
apply). Each timed call ends with ``torch.cuda.synchronize()`` so that the time is the GPU's.

Run: ``pytest benchmarks/test_attention_bench.py``. Skipped without a CUDA device; device and
versions are recorded in each benchmark's extra_info.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kernels.fused_attention import attention, attention_reference

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

B, H, L, D = 128, 4, 256, 32


def _sdpa(q, k, v, key_padding_mask=None, causal=False):
    mask = None if key_padding_mask is None else key_padding_mask[:, None, None, :]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal and mask is None)


IMPLS = {"triton": attention, "eager": attention_reference, "sdpa": _sdpa}


def _inputs(lq: int, dtype: torch.dtype):
    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(B, H, lq, D, device="cuda", dtype=dtype, generator=g, requires_grad=True)
    k = torch.randn(B, H, L, D, device="cuda", dtype=dtype, generator=g, requires_grad=True)
    v = torch.randn(B, H, L, D, device="cuda", dtype=dtype, generator=g, requires_grad=True)
    # IMDB-like padding: each sequence keeps a random length between 32 and 256 tokens.
    lengths = torch.randint(32, L + 1, (B,), device="cuda", generator=g)
    mask = torch.arange(L, device="cuda")[None, :] < lengths[:, None]
    do = torch.randn(B, H, lq, D, device="cuda", dtype=dtype, generator=g)
    return q, k, v, mask, do


def _info(benchmark, impl, lq, dtype, mode):
    import triton

    benchmark.extra_info.update(
        device=torch.cuda.get_device_name(), torch=torch.__version__, triton=triton.__version__,
        impl=impl, shape=f"B{B} H{H} Lq{lq} Lk{L} D{D}", dtype=str(dtype).removeprefix("torch."), mode=mode,
        fp32_matmul_tf32=torch.backends.cuda.matmul.allow_tf32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("lq", [L, 1], ids=["Lq256", "Lq1"])
@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("mode", ["fwd", "fwd_bwd"])
def test_attention(benchmark, mode, impl, lq, dtype):
    fn = IMPLS[impl]
    q, k, v, mask, do = _inputs(lq, dtype)
    benchmark.group = f"attention {mode} Lq={lq} {dtype}"
    _info(benchmark, impl, lq, dtype, mode)

    if mode == "fwd":
        def step():
            with torch.no_grad():
                fn(q, k, v, mask)
            torch.cuda.synchronize()
    else:
        def step():
            out = fn(q, k, v, mask)
            torch.autograd.grad(out, (q, k, v), do)
            torch.cuda.synchronize()

    for _ in range(3):  # compile the Triton kernels and warm the allocator outside the timing
        step()
    benchmark(step)


# --- the readout layer's attention at IMDB's shape: one query per sequence, keys and values from x (B, L, C) ---

C = H * D


def _readout_inputs():
    g = torch.Generator(device="cuda").manual_seed(1)
    x = torch.randn(B, L, C, device="cuda", generator=g, requires_grad=True)
    ws = [(torch.randn(C, C, device="cuda", generator=g) * C ** -0.5).requires_grad_() for _ in range(3)]
    bs = [(torch.randn(C, device="cuda", generator=g) * 0.1).requires_grad_() for _ in range(3)]
    lengths = torch.randint(32, L + 1, (B,), device="cuda", generator=g)
    mask = torch.arange(L, device="cuda")[None, :] < lengths[:, None]
    return x, [t for pair in zip(ws, bs) for t in pair], mask, torch.randn(B, 1, C, device="cuda", generator=g)


def _projected(x, params, mask):
    """Keys and values projected at every position (cuBLAS), then SDPA for the one query."""
    wq, bq, wk, bk, wv, bv = params
    heads = lambda t: t.view(B, -1, H, D).transpose(1, 2)  # noqa: E731
    q, k, v = (heads(F.linear(t, w, b)) for t, w, b in ((x[:, :1], wq, bq), (x, wk, bk), (x, wv, bv)))
    return _sdpa(q, k, v, mask).transpose(1, 2).reshape(B, 1, C)


def _readout(backend):
    from grokfast_train.models.readout_attention import readout_attention

    def run(x, params, mask):
        return readout_attention(x, *params, H, mask, row=0, backend=backend)[0]
    return run


READOUT_IMPLS = {"readout-triton": _readout("triton"), "readout-torch": _readout("torch"), "projected-sdpa": _projected}


@pytest.mark.parametrize("impl", list(READOUT_IMPLS))
@pytest.mark.parametrize("mode", ["fwd", "fwd_bwd"])
def test_readout_attention(benchmark, mode, impl):
    """The readout layer's q, k, v and attention as a step runs them: the triton backend's two kernels (weight
    gradients computed apart, as outside a step's deferred block), the torch backend's einsums, and the plain
    projection + SDPA."""
    fn = READOUT_IMPLS[impl]
    x, params, mask, dout = _readout_inputs()
    benchmark.group = f"readout attention {mode} B{B} L{L} C{C} H{H} fp32"
    _info(benchmark, impl, 1, torch.float32, mode)

    if mode == "fwd":
        def step():
            with torch.no_grad():
                fn(x, params, mask)
            torch.cuda.synchronize()
    else:
        def step():
            out = fn(x, params, mask)
            torch.autograd.grad(out, (x, *params), dout)
            torch.cuda.synchronize()

    for _ in range(3):
        step()
    benchmark(step)
