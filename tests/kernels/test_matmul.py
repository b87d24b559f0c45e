"""kernels.matmul: the Triton kernel (under the interpreter) against ``a @ b + bias`` in float64.

Error: max |kernel - reference| / max(1, max |reference|). The interpreter computes fp32 dots exactly
(whatever the precision mode) and bf16 products are exact in fp32, so fp32 results are held to
summation-order error; bf16 results are rounded once to bf16 (2^-8 relative)."""

import importlib

import pytest
import torch
import torch.nn.functional as F

from kernels import _dispatch
from kernels.matmul import (matmul, matmul_act_grad, matmul_fan, matmul_layer_norm, matmul_layer_norm_grad,
                            matmul_reference)
from tests.kernels.launch_spy import LaunchSpy

mm_mod = importlib.import_module("kernels.matmul")
TOL = {torch.float32: 1e-5, torch.bfloat16: 8e-3}

pytestmark = pytest.mark.skipif(not _dispatch.INTERPRET, reason="needs TRITON_INTERPRET=1 (set by tests/conftest.py)")


def _err(got, want):
    return (got.double() - want).abs().max().item() / max(1.0, want.abs().max().item())


def _want(a, b, bias):
    c = a.double() @ b.double()
    return c if bias is None else c + bias.double().unsqueeze(-2)


def _linear_operands(g, runs, m, k, n, dtype, pad=3):
    """A layer's forward operands as the model passes them: x with rows of a larger stride, Wᵀ a view of
    W (N, K) -- for a pack, of runs' blocks apart by more than N·K in one flat buffer (PackedAdamW's)."""
    lead = () if runs is None else (runs,)
    x = torch.randn(*lead, m, k + pad, generator=g).to(dtype)[..., :k]
    if runs is None:
        w = torch.randn(n, k, generator=g).to(dtype)
    else:
        w = torch.randn(runs, n * k + 7, generator=g).to(dtype)[:, :n * k].view(runs, n, k)
    return x, w


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("runs,m,k,n", [(None, 1, 1, 2), (None, 70, 40, 37), (None, 7, 33, 117), (3, 19, 24, 65),
                                        (2, 130, 5, 3)])
@pytest.mark.parametrize("bias", [None, "fp32", "same"])
def test_forward_and_input_gradient_products(dtype, runs, m, k, n, bias):
    g = torch.Generator().manual_seed(m * 1000 + k * 10 + n)
    x, w = _linear_operands(g, runs, m, k, n, dtype)
    lead = () if runs is None else (runs,)
    b = None if bias is None else torch.randn(*lead, n, generator=g).to(torch.float32 if bias == "fp32" else dtype)
    y = matmul(x, w.transpose(-1, -2), b)  # the forward: x Wᵀ + b
    assert y.dtype == dtype and y.shape == (*lead, m, n) and y.is_contiguous()
    assert _err(y, _want(x, w.transpose(-1, -2), b)) <= TOL[dtype]
    dy = torch.randn(*lead, m, n, generator=g).to(dtype)
    dx = matmul(dy, w)  # the input gradient: dy W
    assert _err(dx, _want(dy, w, None)) <= TOL[dtype]


def _act64(x, form):
    """The activation and its derivative in float64, written out (not torch's GELU: an independent check)."""
    if form == "gelu":
        cdf = 0.5 * (1 + torch.erf(x / 2 ** 0.5))
        return x * cdf, cdf + x * torch.exp(-0.5 * x * x) / (2 * torch.pi) ** 0.5
    if form == "tanh":  # the encoder's pooler
        e = torch.exp(2 * x)
        t = (e - 1) / (e + 1)
        return t, 1 - t * t
    k = (2 / torch.pi) ** 0.5
    t = torch.tanh(k * (x + 0.044715 * x ** 3))
    return 0.5 * x * (1 + t), 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * k * (1 + 3 * 0.044715 * x * x)


@pytest.mark.parametrize("form", ["gelu", "gelu_tanh", "tanh"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("runs,m,k,n", [(None, 70, 40, 37), (3, 19, 24, 130)])
def test_a_layer_followed_by_an_activation_forward_and_input_gradient(form, dtype, runs, m, k, n, monkeypatch):
    """The FFN's first layer (GELU, either form) or the encoder's pooler (tanh): act(x Wᵀ + b) and the product
    from one launch; its input gradient (dy · act'(pre)) W and dy · act'(pre) from one more. Outputs are NaN-poisoned: with n > 64 (two
    column tiles of dx... here of the forward) every element must still be written, dpre exactly once."""
    real_empty, real_empty_like = torch.empty, torch.empty_like
    monkeypatch.setattr(mm_mod.torch, "empty", lambda *a, **kw: real_empty(*a, **kw).fill_(float("nan")))
    monkeypatch.setattr(mm_mod.torch, "empty_like", lambda *a, **kw: real_empty_like(*a, **kw).fill_(float("nan")))
    g = torch.Generator().manual_seed(m + n)
    x, w = _linear_operands(g, runs, m, k, n, dtype)
    lead = () if runs is None else (runs,)
    bias = torch.randn(*lead, n, generator=g)
    y, pre = matmul(x, w.transpose(-1, -2), bias, act=form)
    want_pre = _want(x, w.transpose(-1, -2), bias)
    assert _err(pre, want_pre) <= TOL[dtype]
    want_y, _ = _act64(pre.double(), form)  # the activation of the product as stored (rounded to dtype)
    assert _err(y, want_y) <= TOL[dtype]

    dy = torch.randn(*lead, m, n, generator=g).to(dtype)
    w2 = torch.randn(*lead, n, 2 * k + 70, generator=g).to(dtype)  # dx two column tiles wide and more
    dx, dpre = matmul_act_grad(dy, pre, w2, form)
    _, slope = _act64(pre.double(), form)
    want_dpre = dy.double() * slope
    assert _err(dpre, want_dpre) <= TOL[dtype]
    assert _err(dx, dpre.double() @ w2.double()) <= TOL[dtype]
    assert _err(dx, want_dpre @ w2.double()) <= 2 * TOL[dtype]


@pytest.mark.parametrize("dtype,out_dtype", [(torch.float32, torch.float32), (torch.bfloat16, torch.bfloat16),
                                               (torch.bfloat16, torch.float32)])
@pytest.mark.parametrize("runs,batch,length,k,n", [(None, 37, 5, 24, 70), (3, 9, 7, 33, 20)])
@pytest.mark.parametrize("act", [None, "gelu_tanh"])
def test_gradients_that_meet_are_added_into_a_strided_out(dtype, out_dtype, runs, batch, length, k, n, act):
    """The backward of projections sharing an input: ``dx[:, r] += dq W + g`` (one position of a (B, L, C)
    gradient, updated in place, plus a second addend), and ``dx = dk W + dv_part`` (a fresh out, one addend).
    Every element of ``dx`` outside the row keeps its value; the sums are checked in float64."""
    g = torch.Generator().manual_seed(batch * length + k + (act is None))
    lead = () if runs is None else (runs,)
    _, w = _linear_operands(g, runs, 1, n, k, dtype)  # a layer's weight (k outputs, n inputs): dx = dy W
    dy = torch.randn(*lead, batch, k + 2, generator=g).to(dtype)[..., :k]  # strided rows, as a gradient may be
    mult, want_dy = dy, dy.double()
    kw = {}
    if act is not None:
        pre = torch.randn(*lead, batch, k, generator=g).to(dtype)
        want_dy = dy.double() * _act64(pre.double(), act)[1]
    dx = torch.randn(*lead, batch, length, n, generator=g).to(out_dtype)
    before = dx.clone()
    row = dx[..., length - 2, :]  # (…, B, C): rows length·C apart
    extra = torch.randn(*lead, batch, n, generator=g).to(out_dtype)
    if act is None:
        got = matmul(mult, w, add=(row, extra), out=row)
    else:
        got, dpre = matmul_act_grad(mult, pre, w, act, add=(row, extra), out=row)
        assert _err(dpre, want_dy) <= TOL[dtype]
    assert got.data_ptr() == row.data_ptr() and got.dtype == out_dtype
    want = before[..., length - 2, :].double() + extra.double() + want_dy @ w.double()
    # bf16 operands into a float32 out: the one rounding is float32's, unless GELU' was rounded on the way in
    tol = 2 * TOL[dtype if act is not None or out_dtype == dtype else torch.float32]
    assert _err(dx[..., length - 2, :], want) <= tol
    others = [i for i in range(length) if i != length - 2]
    assert torch.equal(dx[..., others, :], before[..., others, :])

    fresh = matmul(mult, w, add=extra) if act is None else matmul_act_grad(mult, pre, w, act, add=extra)[0]
    assert fresh.dtype == out_dtype and fresh.is_contiguous()
    assert _err(fresh, extra.double() + want_dy @ w.double()) <= 2 * TOL[dtype]


def _two_layers(g, runs, k, n, dtype, bias, count=2):
    """``count`` layers' weights (and biases) of one shape, as the optimiser holds them: solo, separate tensors; a
    pack, views of one run-major buffer, so all have its run stride."""
    if runs is None:
        ws = [torch.randn(n, k, generator=g).to(dtype) for _ in range(count)]
        bs = [None if bias is None else torch.randn(n, generator=g).to(torch.float32 if bias == "fp32" else dtype)
              for _ in range(count)]
        return ws, bs
    size = n * k + (0 if bias is None else n)
    flat = torch.randn(runs, count * size + 5, generator=g).to(dtype)
    ws = [flat[:, i * size:i * size + n * k].view(runs, n, k) for i in range(count)]
    bs = [None if bias is None else flat[:, i * size + n * k:(i + 1) * size].to(torch.float32 if bias == "fp32"
                                                                               else dtype) for i in range(count)]
    return ws, bs


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("runs,m,k,n", [(None, 70, 40, 37), (3, 19, 24, 65)])
@pytest.mark.parametrize("bias", [None, "fp32", "same"])
def test_two_layers_on_one_input_in_one_launch(dtype, runs, m, k, n, bias, monkeypatch):
    """matmul_fan: the attention's k and v projections, (x Wkᵀ + bk, x Wvᵀ + bv), from one launch; and their
    input gradients' sum, dk Wk + dv Wv (+ an addend, into a strided out), from one more. Outputs NaN-poisoned;
    checked in float64."""
    spy = LaunchSpy(mm_mod._matmul_kernel)
    monkeypatch.setattr(mm_mod, "_matmul_kernel", spy)
    real_empty = torch.empty
    monkeypatch.setattr(mm_mod.torch, "empty", lambda *a, **kw: real_empty(*a, **kw).fill_(float("nan")))
    g = torch.Generator().manual_seed(m + n + (runs or 0))
    x, _ = _linear_operands(g, runs, m, k, n, dtype)
    (wk, wv), (bk, bv) = _two_layers(g, runs, k, n, dtype, bias)
    k_out, v_out = matmul_fan(x, wk.transpose(-1, -2), bk, wv.transpose(-1, -2), bv)
    assert _err(k_out, _want(x, wk.transpose(-1, -2), bk)) <= TOL[dtype]
    assert _err(v_out, _want(x, wv.transpose(-1, -2), bv)) <= TOL[dtype]
    assert len(spy.calls) == 1

    lead = () if runs is None else (runs,)
    dk, dv = (torch.randn(*lead, m, n + 2, generator=g).to(dtype)[..., :n] for _ in range(2))  # strided rows
    dx = torch.randn(*lead, m, 3, k, generator=g).to(dtype)
    before, extra = dx.clone(), torch.randn(*lead, m, k, generator=g).to(dtype)
    row = dx[..., 1, :]
    matmul(dk, wk, add=(row, extra), out=row, pair=(dv, wv))
    want = before[..., 1, :].double() + extra.double() + dk.double() @ wk.double() + dv.double() @ wv.double()
    assert _err(dx[..., 1, :], want) <= 2 * TOL[dtype]
    assert torch.equal(dx[..., [0, 2], :], before[..., [0, 2], :])
    assert len(spy.calls) == 2


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("runs,batch,length,pos,k,n", [(None, 13, 6, 5, 40, 37), (3, 5, 7, 0, 24, 65),
                                                       (2, 40, 2, 1, 33, 20), (None, 3, 30, 29, 16, 130)])
@pytest.mark.parametrize("bias", [None, "fp32", "same"])
def test_a_third_layer_on_its_own_rows_in_the_same_launch(dtype, runs, batch, length, pos, k, n, bias, monkeypatch):
    """matmul_fan's third: k and v over every row of x (batch, length, k) and q over x[:, pos] alone -- the
    readout row, rows ``length`` apart -- from one launch; the third's rows fewer than, or (batch 40 x 2 at
    row tiles of 64) in the same tiles as, the others'. Outputs NaN-poisoned; checked in float64."""
    spy = LaunchSpy(mm_mod._matmul_kernel)
    monkeypatch.setattr(mm_mod, "_matmul_kernel", spy)
    real_empty = torch.empty
    monkeypatch.setattr(mm_mod.torch, "empty", lambda *a, **kw: real_empty(*a, **kw).fill_(float("nan")))
    g = torch.Generator().manual_seed(batch * length + pos + n + (runs or 0))
    lead = () if runs is None else (runs,)
    x = torch.randn(*lead, batch, length, k + 3, generator=g).to(dtype)[..., :k]  # rows of a larger stride
    rows, readout = x.reshape(*lead, batch * length, k), x[..., pos, :]
    (wk, wv, wq), (bk, bv, bq) = _two_layers(g, runs, k, n, dtype, bias, count=3)
    outs = matmul_fan(rows, wk.transpose(-1, -2), bk, wv.transpose(-1, -2), bv,
                      third=(readout, wq.transpose(-1, -2), bq))
    assert len(outs) == 3 and len(spy.calls) == 1
    for got, (a, w, b) in zip(outs, ((rows, wk, bk), (rows, wv, bv), (readout, wq, bq))):
        assert got.dtype == dtype and got.shape == (*lead, a.shape[-2], n) and got.is_contiguous()
        assert _err(got, _want(a, w.transpose(-1, -2), b)) <= TOL[dtype]


def test_two_layers_need_one_layout():
    a, w, w2 = torch.randn(5, 4), torch.randn(3, 4), torch.randn(4, 3)
    with pytest.raises(ValueError, match="b2 and bias2 must have b's and bias's"):
        matmul_fan(a, w.t(), None, w2, None)  # contiguous where b is transposed
    with pytest.raises(ValueError, match="b2 and bias2 must have b's and bias's"):
        matmul_fan(a, w.t(), torch.zeros(3), w.t(), None)
    with pytest.raises(ValueError, match="pair=\\(a2, b2\\) must have"):
        matmul(torch.randn(5, 3), w, pair=(torch.randn(3, 5).t(), w))
    with pytest.raises(ValueError, match="add, out and pair are for products without act"):
        matmul(a, w.t(), act="tanh", pair=(a, w.t()))
    with pytest.raises(ValueError, match="pair is for input gradients, without bias"):
        matmul(a, w.t(), torch.zeros(3), pair=(a, w.t()))
    # two programs' rows a run on grid axis 1: a pack past half its limit takes two launches instead
    big = torch.zeros(40000, 1, 1)
    assert mm_mod.matmul_fits_fan(big[:2], None, big[:2], None) and not mm_mod.matmul_fits_fan(big, None, big, None)
    # three with a third layer: past a third of it, the third is a launch of its own
    assert mm_mod.matmul_fits_fan(big[:21845], None, big[:21845], None, layers=3)
    assert not mm_mod.matmul_fits_fan(big[:21846], None, big[:21846], None, layers=3)
    # the third layer: b3 and bias3 laid out as b and bias, a3 with a's run stride and rows along K
    x = torch.randn(2, 3, 2, 4)  # (runs, batch, length, K)
    rows, readout, wt = x.reshape(2, 6, 4), x[:, :, 0], torch.randn(2, 3, 4).transpose(-1, -2)
    assert len(matmul_fan(rows, wt, None, wt, None, third=(readout, wt, None))) == 3
    with pytest.raises(ValueError, match="the third layer's b3 and bias3 must have b's and bias's layouts"):
        matmul_fan(rows, wt, None, wt, None, third=(readout, wt.contiguous(), None))
    with pytest.raises(ValueError, match="the third layer's b3 and bias3 must have b's and bias's layouts"):
        matmul_fan(rows, wt, None, wt, None, third=(torch.randn(3, 3, 4)[:2], wt, None))  # another run stride
    # ... which the model asks first, falling back to a launch of its own
    assert mm_mod.matmul_fits_fan(wt, None, wt, None, layers=3, a=rows, a3=readout)
    assert not mm_mod.matmul_fits_fan(wt, None, wt, None, layers=3, a=rows, a3=torch.randn(3, 3, 4)[:2])
    assert not mm_mod.matmul_fits_fan(wt, None, wt, None, layers=3, a=rows, a3=readout.transpose(-1, -2))


def test_a_pair_on_the_cpu_sums_in_the_float32_out(monkeypatch):
    # bf16 operands into autocast's fp32 gradient on the CPU: each product is PyTorch's bf16 one (as a lone
    # product's reference is), and they are summed in float32 -- not rounded to bf16 again as a sum
    monkeypatch.setattr(mm_mod, "use_triton", lambda *t: False)
    g = torch.Generator().manual_seed(3)
    a, a2 = (torch.randn(64, 32, generator=g).bfloat16() for _ in range(2))
    b, b2 = (torch.randn(32, 48, generator=g).bfloat16() for _ in range(2))
    out = torch.empty(64, 48)
    matmul(a, b, out=out, pair=(a2, b2))
    want = (a @ b).double() + (a2 @ b2).double()
    assert _err(out, want) <= 1e-6


def test_addends_and_out_are_checked():
    a, b = torch.randn(3, 4), torch.randn(4, 5)
    with pytest.raises(ValueError, match="up to two addends"):
        matmul(a, b, add=(torch.zeros(3, 5),) * 3)
    with pytest.raises(ValueError, match="up to two addends"):
        matmul(a, b, add=torch.zeros(3, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match="up to two addends"):
        matmul(a, b, out=torch.zeros(5, 3).t())  # columns strided
    with pytest.raises(ValueError, match="up to two addends"):
        matmul(a.bfloat16(), b.bfloat16(), add=torch.zeros(3, 5), out=torch.zeros(3, 5, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="without act"):
        matmul(a, b, act="tanh", add=torch.zeros(3, 5))


def test_activations_are_pytorchs():
    g = torch.Generator().manual_seed(8)
    x, w = torch.randn(9, 6, generator=g), torch.randn(5, 6, generator=g)
    for form, fn in (("gelu", F.gelu), ("gelu_tanh", lambda t: F.gelu(t, approximate="tanh")), ("tanh", torch.tanh)):
        y, pre = matmul(x, w.t(), act=form)
        torch.testing.assert_close(y, fn(x @ w.t()), atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="act must be"):
        matmul(x, w.t(), act="relu")
    with pytest.raises(ValueError, match="act must be"):
        matmul(x, w.t(), act="none")  # F.gelu's word for the exact form is not an activation's name


def test_tanh_is_accurate_relative_to_its_value_near_zero():
    # (1 - e^-2|u|) / (1 + e^-2|u|) loses the digits of its numerator near 0 (1.4 % off at u = 1e-6); the kernel
    # switches to the series there. Every element within 1e-6 of float64, relative to itself.
    u = torch.cat([torch.logspace(-7, 1, 300), -torch.logspace(-7, 1, 300), torch.zeros(4)]).view(-1, 4)
    y, pre = matmul(u, torch.eye(4), act="tanh")  # pre is u itself
    assert torch.equal(pre, u)
    want = torch.tanh(u.double())
    rel = ((y.double() - want).abs() / want.abs().clamp_min(1e-30)).max().item()
    assert rel <= 1e-6, rel


def test_a_bias_with_a_run_stride_and_every_element_written(monkeypatch):
    real_empty = torch.empty

    def nan_empty(*args, **kwargs):
        return real_empty(*args, **kwargs).fill_(float("nan"))

    monkeypatch.setattr(mm_mod.torch, "empty", nan_empty)
    g = torch.Generator().manual_seed(5)
    runs, m, k, n = 3, 67, 35, 70  # ragged tiles on every axis
    x, w = _linear_operands(g, runs, m, k, n, torch.float32)
    flat = torch.randn(runs, n + 4, generator=g)
    bias = flat[:, :n]  # run stride n + 4
    y = matmul(x, w.transpose(-1, -2), bias)
    assert not y.isnan().any()
    assert _err(y, _want(x, w.transpose(-1, -2), bias)) <= TOL[torch.float32]


def test_one_launch_for_a_whole_pack(monkeypatch):
    spy = LaunchSpy(mm_mod._matmul_kernel)
    monkeypatch.setattr(mm_mod, "_matmul_kernel", spy)
    g = torch.Generator().manual_seed(6)
    x, w = _linear_operands(g, 5, 9, 16, 20, torch.float32)
    matmul(x, w.transpose(1, 2))
    assert len(spy.calls) == 1


def test_empty_and_zero_depth_products():
    a, b = torch.randn(0, 4), torch.randn(4, 3)
    assert matmul(a, b).shape == (0, 3)
    a, b, bias = torch.randn(2, 5, 0), torch.randn(2, 0, 3), torch.randn(2, 3)
    assert torch.equal(matmul(a, b, bias), bias.unsqueeze(1).expand(2, 5, 3))
    assert torch.equal(matmul(a, b), torch.zeros(2, 5, 3))


def test_reference_is_pytorch_linear():
    g = torch.Generator().manual_seed(7)
    x, w, b = torch.randn(6, 5, generator=g), torch.randn(4, 5, generator=g), torch.randn(4, generator=g)
    torch.testing.assert_close(matmul_reference(x, w.t(), b), torch.nn.functional.linear(x, w, b))


@pytest.mark.parametrize("a,b,bias,match", [
    (torch.randn(3, 4), torch.randn(5, 2), None, "a \\(M, K\\)"),
    (torch.randn(3, 4), torch.randn(4, 2).double(), None, "one dtype"),
    (torch.randn(2, 3, 4), torch.randn(3, 4, 2), None, "a \\(M, K\\)"),
    (torch.randn(3, 4), torch.randn(4, 2), torch.randn(3), "bias must be"),
    (torch.randn(3, 4).half(), torch.randn(4, 2).half(), None, "supported: float32, bfloat16"),
])
def test_bad_operands_are_refused(a, b, bias, match):
    with pytest.raises(ValueError, match=match):
        matmul(a, b, bias)


@pytest.mark.parametrize("dtype,res_dtype", [(torch.float32, torch.float32), (torch.bfloat16, torch.bfloat16),
                                             (torch.bfloat16, torch.float32)])
@pytest.mark.parametrize("runs,m,k,n", [(None, 37, 24, 20), (None, 19, 33, 128), (3, 9, 40, 100), (2, 5, 16, 256)])
def test_a_projection_added_to_its_residual_and_normalised_in_one_launch(dtype, res_dtype, runs, m, k, n,
                                                                         monkeypatch):
    """matmul_layer_norm against float64: z = x Wᵀ + b + residual (the residual one row of a (B, L, N) tensor,
    strided), its rows' mean and 1/std, LayerNorm(z) with per-run weights read from a strided flat buffer.
    Outputs are NaN-poisoned: every element written."""
    real_empty = torch.empty
    monkeypatch.setattr(mm_mod.torch, "empty", lambda *a, **kw: real_empty(*a, **kw).fill_(float("nan")))
    g = torch.Generator().manual_seed(m * n + k)
    x, w = _linear_operands(g, runs, m, k, n, dtype)
    lead = () if runs is None else (runs,)
    bias = torch.randn(*lead, n, generator=g).to(dtype)
    residual = torch.randn(*lead, m, 3, n, generator=g).to(res_dtype)[..., 1, :]  # rows 3·N apart
    if runs is None:
        lw, lb = torch.randn(n, generator=g), torch.randn(n, generator=g)
    else:  # the optimiser's flat buffer: weight and bias rows in one (R, S) row each, run stride S
        flat = torch.randn(runs, 2 * n + 5, generator=g)
        lw, lb = flat[:, :n], flat[:, n + 3:2 * n + 3]
    y, z, mean, rstd = matmul_layer_norm(x, w.transpose(-1, -2), bias, residual, lw, lb, 1e-5)
    z64 = _want(x, w.transpose(-1, -2), bias) + residual.double()
    tol = TOL[res_dtype] if res_dtype == dtype else 2e-5
    assert z.dtype == y.dtype == res_dtype and _err(z, z64) <= tol
    zs = z.double()  # the statistics and the normalisation of z as stored
    mean64 = zs.mean(-1)
    rstd64 = 1 / (zs.var(-1, unbiased=False) + 1e-5).sqrt()
    assert _err(mean, mean64) <= 1e-5 and (rstd.double() / rstd64 - 1).abs().max() <= 1e-5
    lw64, lb64 = (t.double().unsqueeze(-2) if runs else t.double() for t in (lw, lb))
    y64 = (zs - mean64.unsqueeze(-1)) * rstd64.unsqueeze(-1) * lw64 + lb64
    assert _err(y, y64) <= TOL[res_dtype]


def test_matmul_layer_norm_refuses_what_it_does_not_fuse():
    a, b, bias, res, lw = torch.randn(3, 4), torch.randn(4, 5), torch.randn(5), torch.randn(3, 5), torch.randn(5)
    with pytest.raises(ValueError, match="a bias, a residual"):
        matmul_layer_norm(a, b, None, res, lw, lw, 1e-5)
    with pytest.raises(ValueError, match="a bias, a residual"):
        matmul_layer_norm(a, torch.randn(4, 300), torch.randn(300), torch.randn(3, 300), torch.randn(300),
                    torch.randn(300), 1e-5)
    with pytest.raises(ValueError, match="a bias, a residual"):
        matmul_layer_norm(a, b, bias, res, torch.randn(2, 5), torch.randn(2, 5), 1e-5)


def _layer_norm_grads64(dy, z, lw, eps):
    """LayerNorm's backward in float64 autograd, of z as stored: dz, dweight, dbias."""
    z64 = z.double().requires_grad_()
    lw64 = lw.double().requires_grad_()
    lb64 = torch.zeros_like(lw64, requires_grad=True)
    xhat = (z64 - z64.mean(-1, keepdim=True)) / (z64.var(-1, unbiased=False, keepdim=True) + eps).sqrt()
    per_run = (lambda t: t.unsqueeze(-2)) if lw.dim() == 2 else (lambda t: t)
    (xhat * per_run(lw64) + per_run(lb64)).backward(dy.double())
    return z64.grad, lw64.grad, lb64.grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("runs,m,k,n", [(None, 37, 24, 20), (None, 130, 128, 70), (3, 9, 40, 100), (2, 67, 7, 1)])
def test_a_layer_norms_backward_and_its_projections_input_gradient_in_one_launch(dtype, runs, m, k, n, monkeypatch):
    """matmul_layer_norm_grad against float64 autograd: dz (LayerNorm's backward from the stored z, mean and
    1/std), dx = dz W into the rows of a strided out, and the partials of the LayerNorm's weight and bias
    gradients, which must sum to them. dy's rows are strided, a pack's LayerNorm weights rows of a flat buffer;
    dz and the partials are NaN-poisoned (every element written once, by one column of programs: n spans up to
    four column tiles, m three row tiles)."""
    real_empty, real_empty_like = torch.empty, torch.empty_like
    monkeypatch.setattr(mm_mod.torch, "empty", lambda *a, **kw: real_empty(*a, **kw).fill_(float("nan")))
    monkeypatch.setattr(mm_mod.torch, "empty_like", lambda *a, **kw: real_empty_like(*a, **kw).fill_(float("nan")))
    g = torch.Generator().manual_seed(m * k + n)
    x, w = _linear_operands(g, runs, m, n, k, dtype)  # the layer x Wᵀ: W (K, N), here read as the input gradient's b
    lead = () if runs is None else (runs,)
    if runs is None:
        lw, lb = torch.randn(k, generator=g), torch.randn(k, generator=g)
    else:
        flat = torch.randn(runs, 2 * k + 5, generator=g)
        lw, lb = flat[:, :k], flat[:, k + 3:2 * k + 3]
    residual = torch.randn(*lead, m, k, generator=g).to(dtype)
    _, z, mean, rstd = matmul_layer_norm(x, w.transpose(-1, -2), torch.randn(*lead, k, generator=g).to(dtype),
                                         residual, lw, lb, 1e-5)
    dy = torch.randn(*lead, m, 2, k, generator=g).to(dtype)[..., 0, :]  # rows 2·K apart
    out = torch.zeros(*lead, m, 3, n, dtype=dtype)[..., 1, :]  # dx's place: rows 3·N apart
    dx, dz, part_w, part_b = matmul_layer_norm_grad(dy, z, lw, mean, rstd, w, out=out)
    dz64, dw64, db64 = _layer_norm_grads64(dy, z, lw, 1e-5)
    assert dx.data_ptr() == out.data_ptr() and dz.dtype == dtype and part_w.dtype == torch.float32
    assert part_w.shape == part_b.shape == (*lead, -(-m // 64 if dtype == torch.float32 else -m // 32), k)
    assert _err(dz, dz64) <= TOL[dtype]
    assert _err(dx, dz.double() @ w.double()) <= TOL[dtype]
    assert _err(part_w.sum(-2), dw64) <= 1e-5 and _err(part_b.sum(-2), db64) <= 1e-5


def test_matmul_layer_norm_grad_refuses_what_it_does_not_fuse():
    dy, z, lw, stat, w = torch.randn(3, 5), torch.randn(3, 5), torch.randn(5), torch.randn(3), torch.randn(5, 4)
    with pytest.raises(ValueError, match="z of dy's shape"):
        matmul_layer_norm_grad(dy, z.double(), lw, stat, stat, w)
    with pytest.raises(ValueError, match="z of dy's shape"):
        matmul_layer_norm_grad(dy, z, torch.randn(4), stat, stat, w)
    with pytest.raises(ValueError, match="float32 mean"):
        matmul_layer_norm_grad(dy, z, lw, stat.double(), stat, w)
    with pytest.raises(ValueError, match="out must be"):
        matmul_layer_norm_grad(dy.bfloat16(), z.bfloat16(), lw, stat, stat, w.bfloat16(), out=torch.empty(3, 4))
