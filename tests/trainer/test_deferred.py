"""models/deferred.py: the models' gradients with the linear layers' weight gradients deferred to one launch
(the triton backend's step) equal autograd's own, for both models, solo and packed, fp32 and bf16 autocast.

The deferred weight gradients run the Triton kernel under the interpreter; the comparison is autograd
without deferral on the same model (an independent computation: cuBLAS-free ``mm`` and ``sum``)."""

import pytest
import torch

from grokfast_train.models import embedding_sum
from grokfast_train.models.decoder import Decoder
from grokfast_train.models.deferred import deferred
from grokfast_train.models.encoder import EncoderClassifier


def _grads(model, x, on, autocast=False):
    model.zero_grad(set_to_none=True)
    with deferred(on=on):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = model(x)
        (out.float() * torch.linspace(-1, 1, out.shape[-1])).square().mean().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _model(kind, runs=None, layers=1):
    torch.manual_seed(0)
    if kind == "decoder":
        m = Decoder(20, hidden=32, heads=2, max_len=8, backend="triton", runs=runs, n_layers=layers)
    else:
        m = EncoderClassifier(50, hidden=32, heads=2, ffn=64, max_len=8, backend="triton", runs=runs,
                              n_layers=layers)
    for p in m.parameters():
        torch.nn.init.normal_(p, std=0.3)
    return m


def _compare(model, x, autocast=False, tol=1e-5):
    plain, held = _grads(model, x, False, autocast), _grads(model, x, True, autocast)
    assert plain.keys() == held.keys()
    for name in plain:
        err = (held[name] - plain[name]).abs().max().item() / max(1.0, plain[name].abs().max().item())
        assert err <= tol, f"{name}: {err:.3g}"
    return plain


@pytest.mark.parametrize("kind", ["decoder", "encoder"])
@pytest.mark.parametrize("layers", [1, 2])
def test_a_model_gets_the_gradients_autograd_gives(kind, layers):
    # 2 layers: the first reads every position (q, k, v and the residual whole), the last its readout row
    x = torch.randint(1, 20, (9, 6))
    grads = _compare(_model(kind, layers=layers), x)
    assert "tok_emb.weight" in grads  # the decoder's tied head adds to the embedding's own gradient


def test_a_table_projected_twice_adds_both_uses(monkeypatch):
    # the decoder's first layer from its tables (the CPU's path): k and v weights each serve two products
    monkeypatch.setattr(embedding_sum.EmbeddingSum, "worth_it", staticmethod(lambda ids, tok: True))
    _compare(_model("decoder"), torch.randint(0, 20, (9, 6)))


@pytest.mark.parametrize("kind", ["decoder", "encoder"])
def test_a_pack_gets_the_gradients_autograd_gives(kind):
    _compare(_model(kind, runs=3), torch.randint(1, 20, (3, 5, 6)))


@pytest.mark.parametrize("kind", ["decoder", "encoder"])
@pytest.mark.parametrize("runs", [None, 3])
def test_gradients_land_in_the_optimisers_buffer(kind, runs):
    # deferred(into=...): the weight-gradient launch, the LayerNorms' sums and the embeddings' backward (the
    # decoder's tables; the encoder's word table, and its position, type and LayerNorm sums with zeros past the
    # rows it uses) write into the optimiser's views, poisoned here (an element left unwritten stays NaN); .grad
    # is the view itself, so step() gathers nothing. The values: autograd's, on an unbound copy of the model.
    from kernels import FusedAdamW, PackedAdamW

    lead = () if runs is None else (runs,)
    x = torch.randint(0, 20, (*lead, 9, 6))
    x[..., -2:] = 0  # the encoder's padding id: its word row gets no gradient
    model, plain = _model(kind, runs=runs), _model(kind, runs=runs)
    want = _grads(plain, x, False)
    params = list(model.parameters())
    opt = FusedAdamW(params) if runs is None else PackedAdamW(params, [{}] * runs, kernel=False)
    views = opt.grad_views()
    for v in views.values():
        v.fill_(float("nan"))
    opt.zero_grad()
    with deferred(into=views):
        out = model(x)
        (out.float() * torch.linspace(-1, 1, out.shape[-1])).square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is views[p], name
        err = (p.grad - want[name]).abs().max().item() / max(1.0, want[name].abs().max().item())
        assert err <= 1e-5, f"{name}: {err:.3g}"


@pytest.mark.parametrize("kind, runs, set_to_none", [
    ("decoder", None, True), ("decoder", None, False), ("decoder", 3, True), ("decoder", 3, False),
    ("encoder", None, True), ("encoder", None, False), ("encoder", 3, False)])
def test_two_backwards_in_one_block_add_up_in_the_optimisers_buffer(kind, runs, set_to_none):
    # gradient accumulation: the second backward adds to what the first wrote into the views (the embedding's
    # tables hold a gradient by then; the deferred layers each appear twice, in two waves); with the views kept
    # and zeroed (set_to_none=False) every write adds. Against autograd's two backwards on an unbound copy.
    from kernels import FusedAdamW, PackedAdamW

    lead = () if runs is None else (runs,)
    xs = [torch.randint(0, 20, (*lead, 9, 6), generator=torch.Generator().manual_seed(i)) for i in (1, 2)]
    model, plain = _model(kind, runs=runs), _model(kind, runs=runs)

    def loss(m, x):
        out = m(x)
        return (out * torch.linspace(-1, 1, out.shape[-1])).square().mean()

    for x in xs:
        loss(plain, x).backward()
    params = list(model.parameters())
    opt = FusedAdamW(params) if runs is None else PackedAdamW(params, [{}] * runs, kernel=False)
    views = opt.grad_views()
    opt.zero_grad(set_to_none=set_to_none)
    with deferred(into=views):
        for x in xs:
            loss(model, x).backward()
    for (name, p), q in zip(model.named_parameters(), plain.parameters()):
        assert p.grad is views[p], name
        err = (p.grad - q.grad).abs().max().item() / max(1.0, q.grad.abs().max().item())
        assert err <= 1e-5, f"{name}: {err:.3g}"


@pytest.mark.parametrize("kind", ["decoder", "encoder"])
def test_bf16_autocast_gives_fp32_gradients_near_autograds(kind):
    # autograd rounds each bf16 product's result to bf16 (~4e-3); the kernel keeps its fp32 sums
    grads = _compare(_model(kind), torch.randint(1, 20, (9, 6)), autocast=True, tol=2e-2)
    assert all(g.dtype == torch.float32 for g in grads.values())


def _linear64(x, w, b, act):
    """Float64 ``act?(x Wᵀ + b)`` for a solo (N, K) or a pack's (R, N, K) weight, x (..., K) / (R, ..., K)."""
    if w.dim() == 3:
        y = torch.matmul(x, w.transpose(-1, -2).reshape(w.shape[0], *[1] * (x.dim() - 3), *w.shape[2:0:-1]))
        y = y + b.reshape(b.shape[0], *[1] * (x.dim() - 2), b.shape[-1])
    else:
        y = x @ w.t() + b
    if act == "tanh":
        return torch.tanh(y)
    return y if act is None else torch.nn.functional.gelu(y, approximate="tanh" if act == "gelu_tanh" else "none")


@pytest.mark.parametrize("runs", [None, 2])
@pytest.mark.parametrize("arrangement", [
    ([(4, None), (None, None), (None, None)], 4),  # the last layer's q, k, v and its readout-row residual
    ([(None, "gelu")], None),  # the FFN's first layer and its residual
    ([(0, "tanh")], None),  # the encoder's pooler, at one row
    ([(-1, None)], -1),  # rows only: the rest of dx is zero
    ([(None, "gelu_tanh"), (1, None)], 3),  # a residual at a row no product reads alone
    ([(2, None), (None, None)], None),  # a whole residual with a row layer
    ([(None, None), (0, None)], 0),  # the second output unread: no gradient for it, none for its weights
    ([(None, None), (None, None)], 2),  # k and v in one launch forward, v's output unread: k's product alone back
])
def test_fan_out_sums_the_gradients_that_meet_at_its_input(arrangement, runs):
    from grokfast_train.models.deferred import fan_out
    from grokfast_train.models.runs import RunLinear

    layers, residual = arrangement
    g = torch.Generator().manual_seed(len(layers) * 10 + (residual or 0) + (runs or 0))
    lead = () if runs is None else (runs,)
    x = torch.randn(*lead, 5, 6, 16, generator=g, requires_grad=True)
    modules = [torch.nn.Linear(16, 24) if runs is None else RunLinear(runs, 16, 24) for _ in layers]
    for m in modules:
        for p in m.parameters():
            p.data.normal_(generator=g)
    unread = arrangement in (([(None, None), (0, None)], 0), ([(None, None), (None, None)], 2))
    seeds = [torch.randn(*lead, 5, 1 if pos is not None else 6, 24, generator=g) for pos, _ in layers]
    seed_res = torch.randn(*lead, 5, 1 if residual is not None else 6, 16, generator=g)

    with deferred():
        outs, kept = fan_out(x, [(m, pos, act) for m, (pos, act) in zip(modules, layers)], residual)
        loss = (kept * seed_res).sum() + sum((o * s).sum() for o, s in list(zip(outs, seeds))[:1 if unread else None])
        loss.backward()
    got = [x.grad] + [p.grad for m in modules for p in (m.weight, m.bias)]

    x64 = x.detach().double().requires_grad_()
    params64 = [[p.detach().double().requires_grad_() for p in (m.weight, m.bias)] for m in modules]

    def rows(t, pos):
        return t if pos is None else t[..., pos % 6:pos % 6 + 1, :]

    outs64 = [_linear64(rows(x64, pos), w, b, act) for (pos, act), (w, b) in zip(layers, params64)]
    loss64 = (rows(x64, residual) * seed_res.double()).sum() + sum(
        (o * s.double()).sum() for o, s in list(zip(outs64, seeds))[:1 if unread else None])
    loss64.backward()
    want = [x64.grad] + [p.grad for ps in params64 for p in ps]
    for a, b in zip(got, want):
        if b is None:
            assert a is None  # an unread output's layer gets no gradient
            continue
        assert (a.double() - b).abs().max().item() <= 1e-5 * max(1.0, b.abs().max().item())


def test_rows_wider_than_one_tile_normalise_apart(monkeypatch):
    # past kernels.MAX_NORM_N the projection and its LayerNorm are two launches again, with the same gradients
    import kernels

    monkeypatch.setattr(kernels, "MAX_NORM_N", 16)
    from grokfast_train.models import deferred as deferred_mod

    calls = []
    real = deferred_mod.linear_norm
    monkeypatch.setattr(deferred_mod, "linear_norm", lambda *a: calls.append(1) or real(*a))
    _compare(_model("encoder"), torch.randint(1, 20, (9, 6)))
    assert not calls
