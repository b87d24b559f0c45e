"""kernels.fused_layer_norm: the Triton kernels (under the interpreter) against the float64 reference.

Inputs are drawn in the tested dtype; the reference runs in float64 on exactly those values, so
the error measured is the kernel's own (fp32 arithmetic and the final rounding to the dtype).
Error metric: max |kernel - reference| / max(1, max |reference|), per output and gradient.
"""

import functools
import importlib

import pytest
import torch

from kernels.fused_layer_norm import layer_norm, layer_norm_reference
from tests.kernels.launch_spy import LaunchSpy

ln_mod = importlib.import_module("kernels.fused_layer_norm")

# dtype -> largest allowed max-abs error relative to max(1, max|reference|), for y, dx, dresidual,
# dweight and dbias alike (measured under the interpreter: fp32 1.7e-7, fp16 3.7e-4, bf16 6.2e-3).
# fp32: fp32 arithmetic; fp16/bf16: the one rounding of the result to the dtype -- half an ulp on a
# GPU (2^-11, 2^-8 relative), but Triton's interpreter truncates fp32 -> bf16, a whole ulp (2^-7).
TOLERANCE = {
    torch.float32: 1e-5,
    torch.float16: 1e-3,
    torch.bfloat16: 1.6e-2,
}

ROWS = (1, 7, 100, 257)
HIDDEN = (7, 128, 257, 768)


@pytest.fixture(autouse=True)
def poisoned_outputs(monkeypatch):
    """Every buffer the kernels write starts as NaN, so an unwritten element shows in the result."""
    def empty(shape, dtype, device):
        return torch.full(shape, float("nan"), dtype=dtype, device=device)

    monkeypatch.setattr(ln_mod, "_empty", empty)


def _close(name, got, ref, dtype):
    assert got.dtype == dtype or name in ("dweight", "dbias"), (name, got.dtype)
    assert torch.isfinite(got).all(), f"{name}: non-finite values (unwritten memory?)"
    err = (got.double() - ref.double()).abs().max().item()
    scale = max(1.0, ref.abs().max().item())
    assert err <= TOLERANCE[dtype] * scale, f"{name} [{dtype}]: max error {err:.3g} > {TOLERANCE[dtype]} x {scale:.3g}"


def _run_case(m, n, dtype, residual, wdtype=None, shape=None, seed=0):
    g = torch.Generator().manual_seed(seed * 7919 + m * 131 + n)
    wdtype = wdtype or dtype
    shape = shape or (m, n)
    x = (torch.randn(shape, generator=g) * 2 + 0.5).to(dtype).requires_grad_()
    r = torch.randn(shape, generator=g).to(dtype).requires_grad_() if residual else None
    w = (1 + 0.5 * torch.randn(n, generator=g)).to(wdtype).requires_grad_()
    b = (0.3 * torch.randn(n, generator=g)).to(wdtype).requires_grad_()
    dy = torch.randn(shape, generator=g).to(dtype)

    y = layer_norm(x, w, b, 1e-5, residual=r)
    y.backward(dy)

    x64 = x.detach().double().requires_grad_()
    r64 = r.detach().double().requires_grad_() if residual else None
    w64 = w.detach().double().requires_grad_()
    b64 = b.detach().double().requires_grad_()
    y64 = layer_norm_reference(x64, w64, b64, 1e-5, residual=r64)
    y64.backward(dy.double())

    assert y.shape == x.shape
    _close("y", y.detach(), y64.detach(), dtype)
    _close("dx", x.grad, x64.grad, dtype)
    if residual:
        _close("dresidual", r.grad, r64.grad, dtype)
    assert w.grad.dtype == wdtype and b.grad.dtype == wdtype
    _close("dweight", w.grad, w64.grad, dtype)
    _close("dbias", b.grad, b64.grad, dtype)


@pytest.mark.parametrize("m", ROWS)
@pytest.mark.parametrize("n", HIDDEN)
@pytest.mark.parametrize("residual", [False, True])
def test_fp32_against_reference(m, n, residual):
    _run_case(m, n, torch.float32, residual)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("m,n", [(1, 7), (7, 257), (100, 128), (257, 768)])
@pytest.mark.parametrize("residual", [False, True])
def test_half_dtypes_against_reference(dtype, m, n, residual):
    _run_case(m, n, dtype, residual)


PAPER_WIDTHS = tuple(range(16, 257, 16))  # the paper's model-wise grid: hidden 16, 32, ..., 256


@pytest.mark.parametrize("n", PAPER_WIDTHS)
def test_paper_hidden_sizes(n):
    """Every hidden size of the paper's model-wise grid, forward and all gradients: one row, and three
    forward tiles (the last one partial) that the backward splits over three programs."""
    block_m = ln_mod._config(n)[1]
    _run_case(1, n, torch.float32, False)
    _run_case(2 * block_m + 1, n, torch.float32, True)


@pytest.mark.parametrize("n", [48, 80, 144, 208, 240])  # not powers of two: masked columns
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_paper_hidden_sizes_half_dtypes(n, dtype):
    _run_case(ln_mod._config(n)[1] + 3, n, dtype, True)


def test_bf16_activations_with_fp32_weights():
    _run_case(33, 96, torch.bfloat16, True, wdtype=torch.float32)


@pytest.mark.parametrize("n", [1, 2, 4096])
def test_extreme_hidden_sizes(n):
    _run_case(3, n, torch.float32, True)


def test_batched_shape_and_non_contiguous_input():
    _run_case(0, 48, torch.float32, True, shape=(3, 5, 48))
    g = torch.Generator().manual_seed(1)
    x = torch.randn(48, 6, generator=g).t()  # (6, 48), non-contiguous
    w, b = torch.randn(48, generator=g), torch.randn(48, generator=g)
    torch.testing.assert_close(layer_norm(x, w, b), layer_norm_reference(x, w, b), atol=2e-5, rtol=2e-5)


def test_without_weight_or_bias():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(9, 40, generator=g, requires_grad=True)
    r = torch.randn(9, 40, generator=g, requires_grad=True)
    y = layer_norm(x, None, None, 1e-6, residual=r)
    x64, r64 = x.detach().double().requires_grad_(), r.detach().double().requires_grad_()
    y64 = torch.nn.functional.layer_norm(x64 + r64, (40,), eps=1e-6)
    torch.testing.assert_close(y.double(), y64, atol=2e-5, rtol=2e-5)
    dy = torch.randn(9, 40, generator=g)
    y.backward(dy)
    y64.backward(dy.double())
    torch.testing.assert_close(x.grad.double(), x64.grad, atol=2e-5, rtol=2e-5)
    assert torch.equal(x.grad, r.grad)


def test_eps_is_used():
    x = torch.tensor([[0.0, 1e-3]])
    w, b = torch.ones(2), torch.zeros(2)
    small, large = layer_norm(x, w, b, eps=1e-12), layer_norm(x, w, b, eps=1.0)
    torch.testing.assert_close(small, layer_norm_reference(x, w, b, 1e-12), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(large, layer_norm_reference(x, w, b, 1.0), atol=1e-7, rtol=1e-5)
    assert small.abs().max() > 0.9 and large.abs().max() < 1e-3


def test_reference_is_layer_norm_of_the_sum():
    g = torch.Generator().manual_seed(3)
    x, r = torch.randn(5, 33, generator=g, dtype=torch.float64), torch.randn(5, 33, generator=g, dtype=torch.float64)
    ln = torch.nn.LayerNorm(33, eps=1e-5, dtype=torch.float64)
    torch.nn.init.normal_(ln.weight)
    torch.nn.init.normal_(ln.bias)
    torch.testing.assert_close(layer_norm_reference(x, ln.weight, ln.bias, 1e-5, residual=r), ln(x + r))


def test_cpu_without_interpreter_runs_the_reference(monkeypatch):
    monkeypatch.setattr(ln_mod, "use_triton", lambda *t: False)
    g = torch.Generator().manual_seed(4)
    x, r = torch.randn(4, 16, generator=g), torch.randn(4, 16, generator=g)
    w, b = torch.randn(16, generator=g), torch.randn(16, generator=g)
    assert torch.equal(layer_norm(x, w, b, 1e-5, r), layer_norm_reference(x, w, b, 1e-5, r))


def test_unsupported_inputs_raise_value_error():
    x = torch.randn(4, 16)
    w, b = torch.ones(16), torch.zeros(16)
    with pytest.raises(ValueError, match="supported: float32, bfloat16, float16"):
        layer_norm(x.double(), w, b)
    with pytest.raises(ValueError, match="supported: 1 to 4096"):
        layer_norm(torch.randn(2, 4097), torch.ones(4097), torch.zeros(4097))
    with pytest.raises(ValueError, match="weight has shape"):
        layer_norm(x, torch.ones(15), b)
    with pytest.raises(ValueError, match="residual has shape"):
        layer_norm(x, w, b, residual=torch.randn(4, 15))
    with pytest.raises(ValueError, match="residual has dtype"):
        layer_norm(x, w, b, residual=x.half())
    with pytest.raises(ValueError, match="supported: float32"):
        layer_norm(x, w.to(torch.int32), b)


def test_compile_specs_cover_every_dispatched_configuration():
    shipped = {(s.fn, s.constexprs["BLOCK_M"], s.constexprs["BLOCK_N"], s.num_warps)
               for s in ln_mod.compile_specs()}
    for n in list(range(1, 70)) + [127, 128, 129, 768, 1000, 2049, 4096]:
        block_n, block_m, fwd_warps, bwd_warps = ln_mod._config(n)
        for fn, warps in ((ln_mod._layer_norm_fwd_kernel, fwd_warps), (ln_mod._layer_norm_bwd_kernel, bwd_warps)):
            assert (fn, block_m, block_n, warps) in shipped, n


# ---- packed runs: weight/bias (R, N), x (R, ..., N), run r normalised with weight[r], bias[r] ----

def _strided_rows(runs, n, stride, offset, values):
    """(runs, n) rows at ``offset`` inside per-run slabs of ``stride`` elements of one flat leaf buffer, as
    the optimiser lays packed runs out: run axis stride ``stride``, each row contiguous. (leaf, view)."""
    buf = torch.full((runs * stride,), float("nan"), dtype=values.dtype)
    view = buf.view(runs, stride)[:, offset:offset + n]
    view.copy_(values)
    buf.requires_grad_()
    return buf, buf.view(runs, stride)[:, offset:offset + n]


def _packed_inputs(runs, lead, n, dtype, residual, wdtype, seed, weight=True, bias=True):
    g = torch.Generator().manual_seed(seed * 7919 + runs * 131 + n)
    shape = (runs, *lead, n)
    x = (torch.randn(shape, generator=g) * 2 + 0.5).to(dtype).requires_grad_()
    r = torch.randn(shape, generator=g).to(dtype).requires_grad_() if residual else None
    # weight and bias in buffers with different run strides, neither equal to n
    w = _strided_rows(runs, n, n + 37, 5, (1 + 0.5 * torch.randn(runs, n, generator=g)).to(wdtype))[1] \
        if weight else None
    b = _strided_rows(runs, n, 2 * n + 3, n + 1, (0.3 * torch.randn(runs, n, generator=g)).to(wdtype))[1] \
        if bias else None
    dy = torch.randn(shape, generator=g).to(dtype)
    return x, r, w, b, dy


def _per_run_float64(x, r, w, b, dy, eps=1e-5):
    """The expected output and gradients, independently of the module: a loop over the runs of
    F.layer_norm in float64 on exactly the kernel's input values."""
    leaves = [t.detach().double().requires_grad_() if t is not None else None for t in (x, r, w, b)]
    x64, r64, w64, b64 = leaves
    n = x.shape[-1]
    y64 = torch.stack([torch.nn.functional.layer_norm(x64[i] if r64 is None else x64[i] + r64[i], (n,),
                                                      None if w64 is None else w64[i],
                                                      None if b64 is None else b64[i], eps)
                       for i in range(x.shape[0])])
    y64.backward(dy.double())
    return y64.detach(), [None if t is None else t.grad for t in leaves]


def _run_packed_case(runs, lead, n, dtype, residual, wdtype=None, seed=0, weight=True, bias=True):
    wdtype = wdtype or dtype
    x, r, w, b, dy = _packed_inputs(runs, lead, n, dtype, residual, wdtype, seed, weight, bias)
    y = layer_norm(x, w, b, 1e-5, residual=r)
    wanted = [t for t in (x, r, w, b) if t is not None]
    grads = iter(torch.autograd.grad(y, wanted, dy))
    got = [next(grads) if t is not None else None for t in (x, r, w, b)]
    y64, ref = _per_run_float64(x, r, w, b, dy)
    assert y.shape == x.shape and y.dtype == dtype
    _close("y", y.detach(), y64, dtype)
    for name, t, gt, rf in zip(("dx", "dresidual", "dweight", "dbias"), (x, r, w, b), got, ref):
        if t is not None:
            assert gt.shape == t.shape and gt.dtype == t.dtype, (name, gt.shape, gt.dtype)
            _close(name, gt, rf, dtype)
    return x, r, w, b, dy, y, got


@pytest.mark.parametrize("runs", [1, 3])
@pytest.mark.parametrize("rows", [1, 7, 37])
@pytest.mark.parametrize("n", [7, 100])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("residual", [False, True])
def test_packed_runs_against_per_run_layer_norm(runs, rows, n, dtype, residual):
    """Packed weight/bias (R, N) with strided run axes: forward and every gradient against a loop over
    the runs of F.layer_norm. rows 37 at n 100 (BLOCK_M 16): three tiles per run, the last partial, and
    two backward programs per run whose row ranges end inside a tile."""
    _run_packed_case(runs, (rows,), n, dtype, residual)


def test_packed_runs_batched_shape_and_fp32_weights_with_bf16_activations():
    _run_packed_case(3, (2, 5), 48, torch.bfloat16, True, wdtype=torch.float32, seed=1)
    _run_packed_case(2, (), 33, torch.float32, True, seed=2)  # x (R, N): one row per run


@pytest.mark.parametrize("weight,bias", [(True, False), (False, True)])
def test_packed_runs_with_weight_or_bias_none(weight, bias):
    _run_packed_case(3, (7,), 40, torch.float32, True, seed=3, weight=weight, bias=bias)


def test_packed_runs_match_solo_kernel_runs():
    """Each packed run is its solo run: y and dx bitwise, dweight/dbias to fp32 rounding (the backward's
    partial sums are grouped differently)."""
    x, r, w, b, dy, y, (dx, dr, dw, db) = _run_packed_case(3, (37,), 100, torch.float32, True, seed=4)
    for i in range(3):
        xi, ri = x[i].detach().clone().requires_grad_(), r[i].detach().clone().requires_grad_()
        wi, bi = w[i].detach().clone().requires_grad_(), b[i].detach().clone().requires_grad_()
        yi = layer_norm(xi, wi, bi, 1e-5, residual=ri)
        yi.backward(dy[i])
        assert torch.equal(y[i], yi) and torch.equal(dx[i], xi.grad) and torch.equal(dr[i], ri.grad)
        torch.testing.assert_close(dw[i], wi.grad, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(db[i], bi.grad, atol=1e-5, rtol=1e-5)


def test_packed_fp32_weights_are_read_in_place(monkeypatch):
    """The strided (R, N) fp32 weight and bias reach the kernels as they are (no copy), with their run strides."""
    fwd, bwd = LaunchSpy(ln_mod._layer_norm_fwd_kernel), LaunchSpy(ln_mod._layer_norm_bwd_kernel)
    monkeypatch.setattr(ln_mod, "_layer_norm_fwd_kernel", fwd)
    monkeypatch.setattr(ln_mod, "_layer_norm_bwd_kernel", bwd)
    _, _, w, b, _, _, _ = _run_packed_case(3, (7,), 20, torch.float32, False, seed=5)
    (args, kwargs), = fwd.calls
    assert args[2].data_ptr() == w.data_ptr() and args[3].data_ptr() == b.data_ptr()
    assert args[-2:] == (w.stride(0), b.stride(0)) == (57, 43) and kwargs["PACKED"]
    (args, kwargs), = bwd.calls
    assert args[2].data_ptr() == w.data_ptr() and args[-1] == 57 and kwargs["PACKED"]


@pytest.mark.parametrize("runs,n,in_place", [(None, 40, True), (3, 40, True), (3, 20, False)])
def test_a_residual_of_strided_rows_is_read_in_place(monkeypatch, runs, n, in_place):
    """The last layer's residual is the readout row of each sequence, seqs[..., 4:5, :]: rows 6 rows apart.
    Both kernels read it where it is (from BLOCK_N 64 on; narrower rows are copied) and get the numbers right."""
    fwd, bwd = LaunchSpy(ln_mod._layer_norm_fwd_kernel), LaunchSpy(ln_mod._layer_norm_bwd_kernel)
    monkeypatch.setattr(ln_mod, "_layer_norm_fwd_kernel", fwd)
    monkeypatch.setattr(ln_mod, "_layer_norm_bwd_kernel", bwd)
    g = torch.Generator().manual_seed(8)
    lead = () if runs is None else (runs,)
    seqs = torch.randn(*lead, 9, 6, n, generator=g).requires_grad_()
    x = torch.randn(*lead, 9, 1, n, generator=g).requires_grad_()
    w = (1 + 0.5 * torch.randn(*lead, n, generator=g)).requires_grad_()
    b = (0.3 * torch.randn(*lead, n, generator=g)).requires_grad_()
    dy = torch.randn(*lead, 9, 1, n, generator=g)
    r = seqs[..., 4:5, :]
    y = layer_norm(x, w, b, 1e-5, residual=r)
    y.backward(dy)
    for (args, _), kind in ((fwd.calls[0], "fwd"), (bwd.calls[0], "bwd")):
        assert (args[1].data_ptr() == r.data_ptr()) == in_place, kind
        strides = [a for a in args if isinstance(a, int) and not isinstance(a, bool)]
        assert (6 * n in strides) == in_place, f"{kind}: the residual's row stride"
    leaves = (x, seqs, w, b)
    want = [t.detach().double().requires_grad_() for t in leaves]
    y64 = layer_norm_reference(want[0], want[2], want[3], 1e-5, residual=want[1][..., 4:5, :])
    y64.backward(dy.double())
    _close("y", y.detach(), y64.detach(), torch.float32)
    for name, got, ref in zip(("dx", "dresidual", "dweight", "dbias"), leaves, want):
        _close(name, got.grad, ref.grad, torch.float32)


def test_packed_reference_is_a_layer_norm_per_run():
    g = torch.Generator().manual_seed(6)
    x, r = torch.randn(3, 4, 5, 33, generator=g, dtype=torch.float64), torch.randn(3, 4, 5, 33, generator=g,
                                                                                  dtype=torch.float64)
    lns = [torch.nn.LayerNorm(33, eps=1e-5, dtype=torch.float64) for _ in range(3)]
    for ln in lns:
        torch.nn.init.normal_(ln.weight, generator=g)
        torch.nn.init.normal_(ln.bias, generator=g)
    w, b = torch.stack([ln.weight for ln in lns]), torch.stack([ln.bias for ln in lns])
    expected = torch.stack([ln(x[i] + r[i]) for i, ln in enumerate(lns)])
    torch.testing.assert_close(layer_norm_reference(x, w, b, 1e-5, residual=r), expected)
    torch.testing.assert_close(layer_norm_reference(x, None, b, 1e-5),
                               torch.stack([torch.nn.functional.layer_norm(x[i], (33,), None, b[i], 1e-5)
                                            for i in range(3)]))


def test_packed_cpu_without_interpreter_runs_the_reference(monkeypatch):
    monkeypatch.setattr(ln_mod, "use_triton", lambda *t: False)
    g = torch.Generator().manual_seed(7)
    x, w, b = torch.randn(2, 3, 16, generator=g), torch.randn(2, 16, generator=g), torch.randn(2, 16, generator=g)
    assert torch.equal(layer_norm(x, w, b, 1e-5), layer_norm_reference(x, w, b, 1e-5))


def test_packed_empty_runs():
    """Runs with no rows: an empty output, zero (R, N) weight and bias gradients."""
    x = torch.randn(3, 0, 24, requires_grad=True)
    w, b = torch.randn(3, 24, requires_grad=True), torch.randn(3, 24, requires_grad=True)
    y = layer_norm(x, w, b)
    y.backward(torch.randn(3, 0, 24))
    assert y.shape == (3, 0, 24)
    assert w.grad.shape == b.grad.shape == (3, 24) and not w.grad.any() and not b.grad.any()


def test_packed_unsupported_inputs_raise_value_error():
    x = torch.randn(3, 4, 16)
    w, b = torch.ones(3, 16), torch.zeros(3, 16)
    with pytest.raises(ValueError, match="must both be 1-D"):
        layer_norm(x, w, torch.zeros(16))
    with pytest.raises(ValueError, match="disagree on the number of packed runs"):
        layer_norm(x, w, torch.zeros(2, 16))
    with pytest.raises(ValueError, match=r"need x of shape \(3, \.\.\., 16\)"):
        layer_norm(torch.randn(2, 4, 16), w, b)
    with pytest.raises(ValueError, match=r"need x of shape"):
        layer_norm(torch.randn(16), w, None)
    with pytest.raises(ValueError, match="weight has shape"):
        layer_norm(x, torch.ones(3, 15), b)
    with pytest.raises(ValueError, match="bias has shape"):
        layer_norm(x, None, torch.zeros(3, 2, 16))


def test_compile_specs_cover_packed_runs():
    shipped = {(s.fn, s.constexprs["BLOCK_M"], s.constexprs["BLOCK_N"], s.constexprs["HAS_RESIDUAL"],
                s.constexprs["PACKED"], s.signature["X"], s.num_warps) for s in ln_mod.compile_specs()}
    for n in list(range(1, 70)) + [127, 128, 129, 768, 1000, 2049, 4096]:
        block_n, block_m, fwd_warps, bwd_warps = ln_mod._config(n)
        for fn, warps in ((ln_mod._layer_norm_fwd_kernel, fwd_warps), (ln_mod._layer_norm_bwd_kernel, bwd_warps)):
            for has_res in (False, True):
                for packed in (False, True):
                    for ty in ("*fp32", "*bf16", "*fp16"):
                        assert (fn, block_m, block_n, has_res, packed, ty, warps) in shipped, n


@pytest.mark.parametrize("runs,rows,n", [(None, 37, 20), (None, 70, 128), (3, 11, 100)])
def test_the_backward_alone_for_a_forward_that_ran_elsewhere(runs, rows, n):
    """layer_norm_backward (the backward of kernels.matmul_layer_norm): from z, the weight and the stored
    statistics, against float64 autograd of LayerNorm(z); the reference and the kernel both."""
    from kernels.fused_layer_norm import layer_norm_backward, layer_norm_backward_reference

    g = torch.Generator().manual_seed(rows + n)
    lead = () if runs is None else (runs,)
    z = torch.randn(*lead, rows, n, generator=g) * 3 + 1
    if runs is None:
        w = torch.randn(n, generator=g)
    else:  # a pack's rows, run stride n + 4 (the optimiser's flat buffer)
        w = torch.randn(runs, n + 4, generator=g)[:, :n]
    dy = torch.randn(*lead, rows, n, generator=g)
    mean = z.mean(-1)
    rstd = 1 / (z.var(-1, unbiased=False) + 1e-5).sqrt()

    z64, w64, b64 = z.double().requires_grad_(), w.double().requires_grad_(), torch.zeros_like(w, dtype=torch.float64,
                                                                                             requires_grad=True)
    if runs is None:
        y64 = torch.nn.functional.layer_norm(z64, (n,), w64, b64, 1e-5)
    else:
        y64 = torch.stack([torch.nn.functional.layer_norm(z64[r], (n,), w64[r], b64[r], 1e-5) for r in range(runs)])
    y64.backward(dy.double())
    def on_cpu(*args, **kwargs):  # the CPU path without the interpreter: the reference, as one partial
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(ln_mod, "use_triton", lambda *tensors: False)
            return layer_norm_backward(*args, **kwargs)

    unreduced = functools.partial(layer_norm_backward, reduce=False)  # the partials, summed here
    unreduced_cpu = functools.partial(on_cpu, reduce=False)
    for fn in (layer_norm_backward, layer_norm_backward_reference, unreduced, unreduced_cpu):
        dz, dw, db = fn(z, w, mean, rstd, dy)
        if fn in (unreduced, unreduced_cpu):
            assert dw.shape == db.shape and dw.shape[:-2] == w.shape[:-1] and dw.shape[-1] == n
            if fn is unreduced:
                assert dw.shape[-2] > 1 or n != 128  # 70 rows of 128 are 5 tiles: several programs' partials
            dw, db = dw.sum(-2), db.sum(-2)
        assert dz.shape == z.shape and dw.shape == db.shape == w.shape
        for got, want in ((dz, z64.grad), (dw, w64.grad), (db, b64.grad)):
            assert (got.double() - want).abs().max().item() <= 1e-5 * max(1.0, want.abs().max().item()), fn
