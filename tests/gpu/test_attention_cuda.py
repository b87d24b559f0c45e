"""Attention on a real GPU at the edges the interpreter cannot reach: launch grids and head sizes.

Skipped without CUDA, and under TRITON_INTERPRET=1 (the CPU suite's setting); run by
``scripts/gpu_check.sh``. The CPU suite records the launch grids and checks them against CUDA's
limits (tests/kernels/test_attention.py); here the launch itself must succeed and match the reference.
"""

import pytest
import torch

from kernels import attention, attention_reference
from kernels._dispatch import INTERPRET

pytestmark = pytest.mark.skipif(not torch.cuda.is_available() or INTERPRET,
                                reason="needs CUDA and TRITON_INTERPRET unset")

# As in tests/gpu/test_cuda.py: fp32 runs tf32x3 on the tensor cores.
TOL = {torch.float32: 2e-4, torch.float16: 3e-3, torch.bfloat16: 3e-2}


def _check(B, H, Lq, Lk, D, dtype, causal, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    q, k, v, do = (torch.randn(B, H, n, D, device="cuda", generator=g, dtype=dtype) for n in (Lq, Lk, Lk, Lq))
    mask = torch.rand(B, Lk, device="cuda", generator=g) > 0.3
    mask[:, 0] = True
    results = []
    for fn in (attention, attention_reference):
        qi, ki, vi = (t.clone().requires_grad_() for t in (q, k, v))
        out = fn(qi, ki, vi, key_padding_mask=mask, causal=causal)
        out.backward(do)
        results.append([out, qi.grad, ki.grad, vi.grad])
    torch.cuda.synchronize()  # a launch error surfaces here at the latest
    for name, a, b in zip(("out", "dq", "dk", "dv"), *results):
        torch.testing.assert_close(a.float(), b.float(), atol=TOL[dtype], rtol=TOL[dtype], msg=name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("Lq,Lk,causal", [(1, 33, False), (33, 33, True)])
def test_batch_times_heads_above_grid_y_limit(dtype, Lq, Lk, causal):
    """B*H = 65,540: on grid axis y (CUDA's limit 65,535) every launch fails with "invalid argument"."""
    _check(16385, 4, Lq, Lk, 32, dtype, causal)
