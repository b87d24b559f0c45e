"""FusedAdamW (one Triton launch over a flat buffer) against torch.optim.AdamW, one optimiser step.

Parameters: the paper's IMDB encoder, ~4.2 M fp32 parameters, 3.9 M of them the 30522 x 128 token
embedding. Competitors: ``torch.optim.AdamW`` in its three implementations (for-loop, ``foreach``
multi-tensor, ``fused=True``), FusedAdamW eager and replayed from a CUDA graph, and the Grokfast
filter on (FusedAdamW's fused filter against the trainer's PyTorch path: a foreach EMA filter, then
foreach AdamW). Byte floor: 28 B/param/step (36 B with the filter) = 118 MB (151 MB), ~40 us (~50 us)
at 3 TB/s. Each timed call ends with ``torch.cuda.synchronize()``.

Run: ``pytest benchmarks/test_adamw_bench.py``. Skipped without a CUDA device; device and versions
are recorded in each benchmark's extra_info.
"""

from __future__ import annotations

import pytest
import torch

from kernels.adamw import FusedAdamW

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

H, FFN, VOCAB, MAXLEN = 128, 512, 30522, 256
# The paper's 1-layer BERT-style classifier: embeddings (+LN), one post-LN layer, pooler, head.
SHAPES = [(VOCAB, H), (MAXLEN, H), (2, H), (H,), (H,),
          (3 * H, H), (3 * H,), (H, H), (H,), (H,), (H,),
          (FFN, H), (FFN,), (H, FFN), (H,), (H,), (H,),
          (H, H), (H,), (2, H), (2,)]
HP = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2)
GROKFAST = (0.98, 2.0)


def _params():
    g = torch.Generator(device="cuda").manual_seed(0)
    ps = [torch.nn.Parameter(torch.randn(s, device="cuda", generator=g) * 0.2) for s in SHAPES]
    for p in ps:
        p.grad = torch.randn(p.shape, device="cuda", generator=g) * 1e-3
    return ps


def _torch_step(variant, grokfast):
    ps = _params()
    kw = dict(foreach=False) if variant == "forloop" else dict(foreach=True) if variant == "foreach" \
        else dict(fused=True)
    opt = torch.optim.AdamW(ps, **HP, **kw)
    grads = [p.grad for p in ps]
    hs = [g.clone() for g in grads] if grokfast else None

    def step():
        if grokfast:  # the trainer's PyTorch path (grokfast_train.grokfast.GrokfastEMA)
            torch._foreach_lerp_(hs, grads, 1.0 - GROKFAST[0])
            torch._foreach_add_(grads, hs, alpha=GROKFAST[1])
        opt.step()
    return step


def _fused_step(graph, grokfast):
    ps = _params()
    kw = dict(grokfast_alpha=GROKFAST[0], grokfast_lamb=GROKFAST[1]) if grokfast else {}
    opt = FusedAdamW(ps, **HP, **kw)
    if not graph:
        return opt.step
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):  # compile the kernel before capture
            opt.step()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        opt.step()
    return g.replay


IMPLS = {
    "triton_fused": lambda gf: _fused_step(False, gf),
    "triton_fused_cudagraph": lambda gf: _fused_step(True, gf),
    "torch_forloop": lambda gf: _torch_step("forloop", gf),
    "torch_foreach": lambda gf: _torch_step("foreach", gf),
    "torch_fused": lambda gf: _torch_step("fused", gf),
}


@pytest.mark.parametrize("grokfast", [False, True], ids=["adamw", "grokfast"])
@pytest.mark.parametrize("impl", list(IMPLS))
def test_adamw_step(benchmark, impl, grokfast):
    import triton

    fn = IMPLS[impl](grokfast)
    n = sum(torch.Size(s).numel() for s in SHAPES)
    benchmark.group = f"AdamW step, {n / 1e6:.2f} M fp32 params{' + Grokfast' if grokfast else ''}"
    benchmark.extra_info.update(device=torch.cuda.get_device_name(), torch=torch.__version__,
                                triton=triton.__version__, impl=impl, params=n, grokfast=grokfast,
                                floor_bytes=n * (36 if grokfast else 28))

    def step():
        fn()
        torch.cuda.synchronize()

    for _ in range(3):
        step()
    benchmark(step)
