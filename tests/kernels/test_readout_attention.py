"""kernels.readout_attention: the two Triton kernels (under the interpreter) against attention computed the plain way
-- keys and values projected, softmax, autograd -- in float64 (an independent computation), and against the
module's own reference for every intermediate the backward and the weight-gradient launch read.

Error: max |kernel - float64| / max(1, max |float64|); fp32 throughout, so TOL = 2e-5 (the interpreter's dots are
exact; on a GPU tf32x3 is within ~1e-6 of fp32, tests/gpu)."""

import importlib

import pytest
import torch

from kernels.readout_attention import (MIN_KEYS, fits, readout_attention_backward, readout_attention_backward_reference,
                                       readout_attention_forward, readout_attention_forward_reference)

ra_mod = importlib.import_module("kernels.readout_attention")
TOL = 2e-5


@pytest.fixture(autouse=True)
def poisoned_outputs(monkeypatch):
    monkeypatch.setattr(ra_mod, "_empty", lambda shape, device: torch.full(shape, float("nan"), device=device))


def _plain(x, row, wq, bq, wk, bk, wv, bv, heads, mask):
    """The query at ``row`` attending over projected keys and values, heads merged: (N, C); per sequence with the
    weights of its run (a pack's (R, ...) weights serve N/R sequences each). A sequence without keys gets 0."""
    N, L, C = x.shape
    D = C // heads
    if wq.dim() == 3:
        wq, bq, wk, bk, wv, bv = (w.repeat_interleave(N // w.shape[0], 0) for w in (wq, bq, wk, bk, wv, bv))
    else:
        wq, bq, wk, bk, wv, bv = (w.expand(N, *w.shape) for w in (wq, bq, wk, bk, wv, bv))
    lin = lambda t, w, b: t @ w.transpose(-1, -2) + b[:, None]  # noqa: E731
    split = lambda t: t.view(N, -1, heads, D).transpose(1, 2)  # noqa: E731
    q, k, v = split(lin(x[:, row:row + 1], wq, bq)), split(lin(x, wk, bk)), split(lin(x, wv, bv))
    s = q @ k.transpose(-1, -2) / D ** 0.5  # (N, H, 1, L)
    keys = torch.ones(N, L, dtype=torch.bool) if mask is None else mask
    seen = keys.any(-1)
    s = s.masked_fill(~(keys | ~seen[:, None])[:, None, None, :], float("-inf"))  # (no key: left finite, output 0)
    out = (s.softmax(-1) @ v).transpose(1, 2).reshape(N, C)
    return torch.where(seen[:, None], out, 0.0)


def _case(n, L, C, heads, row, runs=None, masked=False, seed=0, run_gap=0):
    g = torch.Generator().manual_seed(seed)
    # the first L positions of longer sequences, as a causal decoder's readout layer slices them (stride(0) > L·C)
    x = torch.randn(n, L + 2, C, generator=g)[:, :L]
    lead = () if runs is None else (runs,)
    if runs is None:
        ws = [torch.randn(C, C, generator=g) / C ** 0.5 for _ in range(3)]
        bs = [torch.randn(C, generator=g) for _ in range(3)]
    else:  # a pack's weights as run-strided views of one buffer (PackedAdamW's layout)
        flat = torch.randn(runs, 3 * C * C + 3 * C + run_gap, generator=g)
        ws = [flat[:, i * C * C:(i + 1) * C * C].view(runs, C, C).mul_(C ** -0.5) for i in range(3)]
        bs = [flat[:, 3 * C * C + i * C:3 * C * C + (i + 1) * C] for i in range(3)]
        assert ws[0].stride(0) == 3 * C * C + 3 * C + run_gap
    mask = None
    if masked:
        mask = torch.rand(n, L, generator=g) > 0.4
        mask[0] = False  # a sequence with no key at all
        mask[-1, row] = False  # the query's own row need not be a key
    weights = dict(wq=ws[0], bq=bs[0], wk=ws[1], bk=bs[1], wv=ws[2], bv=bs[2])
    assert all(w.shape[:len(lead)] == lead for w in weights.values())
    return x, weights, mask, torch.randn(n, C, generator=g), torch.randn(n, C, generator=g)


def _err(a, b):
    return (a.double() - b).abs().max().item() / max(1.0, b.abs().max().item())


CASES = [  # (N, L, C, heads, row, runs, masked)
    (3, 7, 32, 4, 0, None, False),  # one block of keys
    (2, 70, 48, 3, 69, None, True),  # three blocks, the last ragged; padded width (48 -> 64), head size 16
    (4, 33, 20, 4, 5, None, True),  # head size 5, width 20 -> 32
    (1, 1, 16, 1, 0, None, False),  # one key, one head
    (6, 40, 64, 4, 17, 3, True),  # a pack of 3 runs, 2 sequences each, its weights strided views
    (5, 9, 100, 5, 4, None, False),  # width 100 -> 128, head size 20
]


@pytest.mark.parametrize("n,L,C,heads,row,runs,masked", CASES)
@pytest.mark.parametrize("with_drow", [True, False])
def test_forward_and_gradients_match_the_projected_computation(n, L, C, heads, row, runs, masked, with_drow):
    x, w, mask, dout, drow = _case(n, L, C, heads, row, runs, masked, seed=n * L + C)
    drow = drow if with_drow else None
    saved = readout_attention_forward(x, row, heads=heads, mask=mask, **w)
    g = readout_attention_backward(dout, drow, x, row, saved, w["wq"], w["wk"], w["bk"], w["wv"], heads, mask)

    x64 = x.double().requires_grad_()
    w64 = {k: v.double().requires_grad_() for k, v in w.items()}
    out = _plain(x64, row, heads=heads, mask=mask, **w64)
    assert _err(saved.out, out.detach()) <= TOL
    loss = (out * dout.double()).sum() + (0 if drow is None else (x64[:, row] * drow.double()).sum())
    loss.backward()

    # the weight gradients as the weight-gradient launch forms them from the kernels' rows (dyᵀ x, Σ dy), in float64
    runs_ = () if runs is None else (runs,)
    rows = lambda t: t.double().reshape(*runs_, -1, C)  # noqa: E731
    dw = lambda a, dy: rows(dy).transpose(-1, -2) @ rows(a)  # noqa: E731
    mine = {"x": g.dx, "wq": dw(x[:, row], g.dq), "bq": rows(g.dq).sum(-2), "wk": dw(g.d_q_in, g.q_heads),
            "bk": rows(g.bk_rows).sum(-2), "wv": dw(saved.mixed, g.dout_heads), "bv": rows(g.dout_heads).sum(-2)}
    want = {"x": x64.grad, **{k: v.grad for k, v in w64.items()}}
    for name in mine:
        assert mine[name].shape == want[name].shape and torch.isfinite(mine[name]).all(), name
        assert _err(mine[name], want[name]) <= TOL, (name, _err(mine[name], want[name]))
    if mask is not None:  # the sequence without keys: output 0, no gradient but the residual's
        assert not saved.out[0].any() and not g.dx[0, torch.arange(L) != row].any()


@pytest.mark.parametrize("n,L,C,heads,row,runs,masked", CASES[1:3] + CASES[4:5])
def test_every_intermediate_matches_the_reference(n, L, C, heads, row, runs, masked):
    x, w, mask, dout, drow = _case(n, L, C, heads, row, runs, masked, seed=7)
    saved = readout_attention_forward(x, row, heads=heads, mask=mask, **w)
    ref = readout_attention_forward_reference(x, row, heads=heads, mask=mask, **w)
    for name, a, b in zip(saved._fields, saved, ref):
        assert a.shape == b.shape and torch.equal(torch.isinf(a), torch.isinf(b)), name
        assert _err(torch.where(torch.isinf(a), 0, a), torch.where(torch.isinf(b), 0, b).double()) <= TOL, name
    g = readout_attention_backward(dout, drow, x, row, saved, w["wq"], w["wk"], w["bk"], w["wv"], heads, mask)
    gr = readout_attention_backward_reference(dout, drow, x, row, ref, w["wq"], w["wk"], w["bk"], w["wv"], heads,
                                              mask)
    for name, a, b in zip(g._fields, g, gr):
        assert a.shape == b.shape and _err(a, b.double()) <= TOL, name


def test_bk_gets_what_projected_keys_give_it_zero_up_to_rounding():
    # softmax ignores a shift shared by every key: bk's exact gradient is 0, and the kernels' rows sum to ~0
    x, w, mask, dout, _ = _case(4, 40, 32, 2, 3, seed=3)
    w["bk"] = w["bk"] * 100  # large q·bk: the rows are large, their sum still ~0
    saved = readout_attention_forward(x, 3, heads=2, mask=mask, **w)
    g = readout_attention_backward(dout, None, x, 3, saved, w["wq"], w["wk"], w["bk"], w["wv"], 2, mask)
    assert g.bk_rows.abs().max() > 0 and g.bk_rows.sum((0, 1)).abs().max() <= 1e-4


def test_fits_wide_sequences_of_narrow_models_only():
    assert fits(128, 4, 256) and fits(128, 16, MIN_KEYS) and fits(20, 4, MIN_KEYS)
    assert not fits(128, 4, MIN_KEYS - 1)  # the modular task's 6-token prompt: projecting is cheaper
    assert not fits(256, 8, 256) and not fits(128, 32, 256) and not fits(96, 5, 256)


@pytest.mark.parametrize("change,match", [
    (dict(x=torch.zeros(2, 3)), "must be \\(N, L, C\\)"),
    (dict(row=5), "row 5 outside"),
    (dict(heads=5), "not supported"),
    (dict(mask=torch.ones(2, 5)), "mask must be bool"),
    (dict(wk=torch.zeros(16, 15)), "weights must be"),
])
def test_bad_arguments_are_one_clear_error(change, match):
    x, w, mask, _, _ = _case(2, 5, 16, 2, 0)
    args = dict(x=x, row=0, heads=2, mask=None, **w)
    args.update(change)
    with pytest.raises(ValueError, match=match):
        readout_attention_forward(**args)
