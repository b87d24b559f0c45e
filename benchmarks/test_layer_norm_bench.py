"""Triton LayerNorm (optionally fused with the residual add) against eager PyTorch.

Shape: the paper's IMDB step, (128*256, 128) activations. Competitors: ``F.layer_norm`` (and
``F.layer_norm(x + r)`` for the residual variant: two kernels, the sum written and re-read) and the
Triton kernel. Modes: forward, and forward + backward (dx, dresidual, dweight, dbias). Each timed
call ends with ``torch.cuda.synchronize()``.

Run: ``pytest benchmarks/test_layer_norm_bench.py``. Skipped without a CUDA device; device and
versions are recorded in each benchmark's extra_info.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kernels.fused_layer_norm import layer_norm

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

M, N = 128 * 256, 128


def _eager(x, w, b, eps, residual=None):
    return F.layer_norm(x if residual is None else x + residual, (x.shape[-1],), w, b, eps)


IMPLS = {"triton": layer_norm, "eager": _eager}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("mode", ["fwd", "fwd_bwd"])
def test_layer_norm(benchmark, mode, impl, residual, dtype):
    import triton

    fn = IMPLS[impl]
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(M, N, device="cuda", dtype=dtype, generator=g, requires_grad=True)
    r = torch.randn(M, N, device="cuda", dtype=dtype, generator=g, requires_grad=True) if residual else None
    w = torch.randn(N, device="cuda", dtype=dtype, generator=g, requires_grad=True)
    b = torch.randn(N, device="cuda", dtype=dtype, generator=g, requires_grad=True)
    dy = torch.randn(M, N, device="cuda", dtype=dtype, generator=g)
    inputs = (x, w, b) + ((r,) if residual else ())
    benchmark.group = f"layer_norm {mode} ({M}, {N}) {'+residual ' if residual else ''}{dtype}"
    benchmark.extra_info.update(device=torch.cuda.get_device_name(), torch=torch.__version__,
                                triton=triton.__version__, impl=impl, shape=f"({M}, {N})",
                                dtype=str(dtype).removeprefix("torch."), residual=residual, mode=mode)

    if mode == "fwd":
        def step():
            with torch.no_grad():
                fn(x, w, b, 1e-5, residual=r)
            torch.cuda.synchronize()
    else:
        def step():
            y = fn(x, w, b, 1e-5, residual=r)
            torch.autograd.grad(y, inputs, dy)
            torch.cuda.synchronize()

    for _ in range(3):
        step()
    benchmark(step)
