"""``kernels.matmul`` (fp32 in tf32x3 on the tensor cores) against PyTorch's products, at the step's shapes.

The products the trainer's linear layers run, forward (``x Wᵀ + b``): the key/value projections of
every position and the FFN's first layer at the readout rows, for the modular task (512 sequences of 6
tokens, hidden 128, FFN 512) solo and as a pack of 64 runs, and the IMDB key/value projection
(128 × 256 tokens). Competitors: ``kernels.matmul``; PyTorch fp32 with TF32 off (its default, the paper's
setting: CUDA cores); PyTorch with TF32 on (tensor cores, 10-bit mantissas: not the same numbers).
Then the k and v projections and their input gradients: one launch for both (``matmul_fan``, ``matmul``'s
``pair``) against two launches and PyTorch's two products. Then post-LN's backward at the readout rows:
the LayerNorm's backward in the input gradient's product (``matmul_layer_norm_grad``) against
``layer_norm_backward`` and a product, and PyTorch's ``native_layer_norm_backward`` and a product. Each timed
call ends with ``torch.cuda.synchronize()``.

Run: ``pytest benchmarks/test_matmul_bench.py``. Skipped without a CUDA device.
"""

from __future__ import annotations

import pytest
import torch

from kernels.matmul import matmul

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

# name -> (runs or None, rows, in features, out features)
SHAPES = {
    "modular-kv": (None, 512 * 6, 128, 128),
    "modular-fc1": (None, 512, 128, 512),
    "modular-pack64-kv": (64, 512 * 6, 128, 128),
    "modular-pack64-fc1": (64, 512, 128, 512),
    "imdb-kv": (None, 128 * 256, 128, 128),
}


def _torch(tf32: bool):
    def product(x, wt, b):
        torch.backends.cuda.matmul.allow_tf32 = tf32
        try:
            return torch.addmm(b, x, wt) if x.dim() == 2 else torch.baddbmm(b.unsqueeze(1), x, wt)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = False
    return product


IMPLS = {"triton-tf32x3": matmul, "torch-fp32": _torch(False), "torch-tf32": _torch(True)}


def _time(benchmark, group: str, impl: str, shape: str, gflop: float, fn, *args) -> None:
    """Times ``fn(*args)`` to its device's end (three calls first: compiles, allocator), tagged for the table."""
    import triton

    benchmark.group = group
    benchmark.extra_info.update(device=torch.cuda.get_device_name(), torch=torch.__version__,
                                triton=triton.__version__, impl=impl, shape=shape, gflop=gflop)

    def step():
        fn(*args)
        torch.cuda.synchronize()

    for _ in range(3):
        step()
    benchmark(step)


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("shape", list(SHAPES))
def test_linear_forward_product(benchmark, shape, impl):
    runs, m, k, n = SHAPES[shape]
    lead = () if runs is None else (runs,)
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(*lead, m, k, device="cuda", generator=g)
    w = torch.randn(*lead, n, k, device="cuda", generator=g)
    b = torch.randn(*lead, n, device="cuda", generator=g)
    _time(benchmark, f"linear forward {shape} ({'' if runs is None else f'{runs} x '}{m} x {k} -> {n}) fp32", impl,
          shape, 2 * (runs or 1) * m * k * n / 1e9, IMPLS[impl], x, w.transpose(-1, -2), b)


# the k and v projections (and their input gradients): one launch for both against two, and PyTorch's two
KV_SHAPES = {k: SHAPES[k] for k in ("modular-kv", "modular-pack64-kv")}


def _kv_impls(direction: str):
    from kernels.matmul import matmul_fan

    if direction == "forward":
        return {"triton-one-launch": lambda x, ws, bs: matmul_fan(x, ws[0].transpose(-1, -2), bs[0],
                                                                   ws[1].transpose(-1, -2), bs[1]),
                "triton-two-launches": lambda x, ws, bs: [matmul(x, w.transpose(-1, -2), b) for w, b in zip(ws, bs)],
                "torch-fp32": lambda x, ws, bs: [_torch(False)(x, w.transpose(-1, -2), b) for w, b in zip(ws, bs)]}
    return {"triton-one-launch": lambda dys, ws: matmul(dys[0], ws[0], pair=(dys[1], ws[1])),
            "triton-two-launches": lambda dys, ws: matmul(dys[1], ws[1], add=matmul(dys[0], ws[0])),
            "torch-fp32": lambda dys, ws: torch.matmul(dys[0], ws[0]).add_(torch.matmul(dys[1], ws[1]))}


@pytest.mark.parametrize("impl", ["triton-one-launch", "triton-two-launches", "torch-fp32"])
@pytest.mark.parametrize("direction", ["forward", "input-gradient"])
@pytest.mark.parametrize("shape", list(KV_SHAPES))
def test_k_and_v_projections(benchmark, shape, direction, impl):
    runs, m, k, n = KV_SHAPES[shape]
    lead = () if runs is None else (runs,)
    g = torch.Generator(device="cuda").manual_seed(1)
    size = n * k + n  # a pack's weights: views of one buffer, one run stride (PackedAdamW's layout)
    flat = torch.randn(*lead, 2 * size, device="cuda", generator=g)
    ws = [flat[..., i * size:i * size + n * k].view(*lead, n, k) for i in range(2)]
    bs = [flat[..., i * size + n * k:(i + 1) * size] for i in range(2)]
    fn = _kv_impls(direction)[impl]
    if direction == "forward":
        x = torch.randn(*lead, m, k, device="cuda", generator=g)
        args = (x, ws, bs)
    else:
        args = ([torch.randn(*lead, m, n, device="cuda", generator=g) for _ in range(2)], ws)
    _time(benchmark, f"k and v {direction} {shape} ({'' if runs is None else f'{runs} x '}{m} x {k} -> 2 x {n}) fp32",
          impl, shape, 2 * 2 * (runs or 1) * m * k * n / 1e9, fn, *args)


# post-LN's backward: name -> (runs or None, readout rows, the LayerNorm's width, the projection's input features)
LN_SHAPES = {"modular-o": (None, 512, 128, 128), "modular-fc2": (None, 512, 128, 512),
             "modular-pack64-fc2": (64, 512, 128, 512), "imdb-o": (None, 128, 128, 128)}


def _ln_grad_impls():
    from kernels import layer_norm_backward, matmul_layer_norm_grad

    def torch_fp32(dy, z, lw, mean, rstd, w):
        dz = torch.empty_like(z)
        for r in range(1 if z.dim() == 2 else z.shape[0]):  # (PyTorch's LayerNorm has one weight per call)
            zr, dyr, m, s, lwr = ((t if z.dim() == 2 else t[r]) for t in (z, dy, mean, rstd, lw))
            d, _, _ = torch.ops.aten.native_layer_norm_backward(dyr, zr, lwr.shape, m.unsqueeze(-1), s.unsqueeze(-1),
                                                                 lwr, torch.zeros_like(lwr), [True, True, True])
            (dz if z.dim() == 2 else dz[r]).copy_(d)
        return torch.matmul(dz, w)

    return {"triton-one-launch": matmul_layer_norm_grad,
            "triton-two-launches": lambda dy, z, lw, mean, rstd, w: matmul(
                layer_norm_backward(z, lw, mean, rstd, dy, reduce=False)[0], w),
            "torch-fp32": torch_fp32}


@pytest.mark.parametrize("impl", ["triton-one-launch", "triton-two-launches", "torch-fp32"])
@pytest.mark.parametrize("shape", list(LN_SHAPES))
def test_layer_norm_backward_and_input_gradient(benchmark, shape, impl):
    from kernels import matmul_layer_norm

    runs, m, c, n = LN_SHAPES[shape]
    lead = () if runs is None else (runs,)
    g = torch.Generator(device="cuda").manual_seed(2)
    x = torch.randn(*lead, m, n, device="cuda", generator=g)
    w = torch.randn(*lead, c, n, device="cuda", generator=g) / n ** 0.5
    b, lw, lb = (torch.randn(*lead, c, device="cuda", generator=g) for _ in range(3))
    _, z, mean, rstd = matmul_layer_norm(x, w.transpose(-1, -2), b, torch.randn(*lead, m, c, device="cuda",
                                                                                 generator=g), lw, lb, 1e-5)
    dy = torch.randn(*lead, m, c, device="cuda", generator=g)
    _time(benchmark, f"LayerNorm backward + input gradient {shape} ({'' if runs is None else f'{runs} x '}{m} x {c}"
                     f" -> {n}) fp32", impl, shape, 2 * (runs or 1) * m * c * n / 1e9, _ln_grad_impls()[impl], dy, z,
          lw, mean, rstd, w)
