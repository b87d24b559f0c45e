"""Linear layers whose weight gradients wait for the end of the backward, then come in one launch.

Autograd runs a linear layer's backward as three kernels: the input's gradient ``dy W`` (which the
layer below waits for), the weight's ``dyᵀ x`` and the bias's ``Σ dy`` (which nothing in the backward
waits for). Inside ``deferred()``, the model's linear layers (``Linear``, a pack's ``RunLinear``, the
tied LM head) compute the first alone and note (x, dy) for the others; when the block ends,
``kernels.linear_weight_grads`` computes every noted weight and bias gradient of the step in one launch
and writes each into its parameter's ``.grad`` (adding to one already there: the tied embedding's).
The modular step's kernel census went from 63 to 49 (13 products and sums and the tied head's gradient
addition gone, one launch added, and the readout row's query projection one ``addmm`` where it was a
product and an add); the numbers are the same sums in another order.

    with deferred(on=backend == "triton", into=opt.grad_views()):
        loss = model(x) ...
        loss.backward()
    # every parameter's .grad is complete here

``into``: where each parameter's gradient goes when the step makes it first -- the optimiser's views of its
flat gradient buffer (``FusedAdamW``, ``PackedAdamW``). The weight-gradient launch, the LayerNorms' sums and
the embeddings' backward (the decoder's ``token_position_embedding``, the encoder's ``embedding_layer_norm``)
write there and set ``.grad`` to the view, so the optimiser's step finds those gradients in place. In both
models' steps that is every gradient: the optimiser gathers nothing (27 -> 26 kernels per modular step; a
pack's zero fill and its additions into the views go too). The encoder's embedding block leaves its position,
type and LayerNorm sums to the weight-gradient launch as well, with zeros past the rows the batch uses (IMDB
35 -> 30). What other paths hand autograd -- a LayerNorm past ``MAX_NORM_N``, tables past the token embedding's
``MAX_V`` -- ``step()`` still copies in.

The products themselves are ``kernels.matmul`` (fp32 on the tensor cores in tf32x3, a pack's runs in one
launch). Layers that read one input (q, k, v; the FFN's first layer) go through ``fan_out``, whose backward
sums their input gradients and the residual's inside the products (37 -> 32 kernels per modular step); the
first two of them reading every position with one weight layout share a launch each way, ``kernels.matmul_fan``
forward and ``matmul``'s ``pair`` for ``dk Wk + dv Wv`` -- k and v in the readout layer, q and k in a layer
that computes every row (modular 25 -> 23, IMDB 28 -> 26), and forward a third layer on its own rows in the
same launch, the query at the readout row (21 -> 20, IMDB 24 -> 23); and
a projection followed by post-LN's add and normalise goes through ``linear_norm``: the LayerNorm's forward in
the product's epilogue (32 -> 30), the sums of its backward's partials for its weight and bias in the
weight-gradient launch (29 -> 27), and the backward itself in the input gradient's prologue (23 -> 21, IMDB
26 -> 24).
Under bf16 autocast a layer computes in bf16, as ``F.linear`` does there; its weight gradient lands in fp32
in the fp32 parameter's ``.grad``, and its input gradient in fp32 straight from the product's accumulator.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

_active: list["_Pending"] = []


class _Pending:
    """The (x, dy) of every deferred layer since the block began, and where their gradients go: an item
    (x, dy, weight, bias) gets weight's gradient dyᵀ x and bias's Σ dy; (None, dy, None, param) is a sum
    alone, param's gradient Σ dy (a LayerNorm's weight or bias from its backward's partial sums)."""

    def __init__(self, into: dict[nn.Parameter, torch.Tensor]):
        self.items: list[tuple[torch.Tensor | None, torch.Tensor, nn.Parameter | None, nn.Parameter | None]] = []
        self.into = into

    def home(self, p: nn.Parameter) -> torch.Tensor:
        """Where p's gradient is written when it has none yet: its place in ``into``, else a fresh tensor."""
        home = self.into.get(p)
        return torch.empty_like(p) if home is None else home

    def flush(self) -> None:
        import kernels

        # A parameter used twice (a table projected twice) must not be written by two programs of one
        # launch: its second use waits for a later wave, which adds to what the first wrote.
        waves: list[list] = []
        for item in self.items:
            wave = next((w for w in waves if not any(p is q for other in w for p in _params(item)
                                                     for q in _params(other))), None)
            if wave is None:
                waves.append(wave := [])
            wave.append(item)
        for wave in waves:
            problems, fresh = [], {}
            for x, dy, weight, bias in wave:
                params = _params((x, dy, weight, bias))
                # a gradient already there (the tied embedding's): add to it; one flag serves a layer's
                # weight and bias, so if only one holds a gradient the other adds to zeros
                add = any(p.grad is not None for p in params)
                for p in params:
                    if add and p.grad is None:
                        p.grad = self.home(p).zero_()
                dw, db = ((p.grad if add else fresh.setdefault(p, self.home(p)))
                          if p is not None else None for p in (weight, bias))
                if x is None:  # a sum alone lands in a table's rows too (flat, zeros past the partials)
                    db = db.view(db.shape[0], -1) if dy.dim() == 3 else db.view(-1)
                problems.append(kernels.WeightGrad(x, dy, dw, db, add))
            kernels.linear_weight_grads(problems)
            for p, g in fresh.items():
                p.grad = g
        self.items.clear()


def _params(item: tuple) -> list[nn.Parameter]:
    return [p for p in item[2:] if p is not None]


def active() -> bool:
    return bool(_active)


@contextlib.contextmanager
def deferred(on: bool = True, into: dict[nn.Parameter, torch.Tensor] | None = None) -> Iterator[None]:
    """Within the block, linear layers defer their weight gradients; at its end they are computed (above),
    each written into ``into[p]`` where given (a tensor like p) when p has no gradient yet."""
    if not on:
        yield
        return
    pending = _Pending(into or {})
    _active.append(pending)
    try:
        yield
    finally:
        _active.remove(pending)
    pending.flush()


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
           act: str | None = None) -> torch.Tensor:
    """``x Wᵀ + b`` for W (N, K), or a pack's (R, N, K) with x (R, ..., K); deferring inside ``deferred()``.
    ``act``: an activation after it, in the product's launch each way (``kernels.matmul``'s: "gelu",
    "gelu_tanh", "tanh" -- the encoder's pooler)."""
    return _Linears.apply(x, _active[-1], ((None, act),), _NO_RESIDUAL, weight, bias)[0]


def fan_out(x: torch.Tensor, layers: list[tuple[nn.Module, int | None, str | None]],
            residual: int | None) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Several linear layers reading one input, which also goes on as a residual: the attention's q, k, v
    projections, the FFN's first layer. Each layer is (module, position, act): position None reads every
    position of x (..., L, C), an int p reads x[..., p:p+1, :] alone (the readout row); act None, or an
    activation of ``kernels.matmul``'s ("gelu", "gelu_tanh", "tanh") for ``act(x Wᵀ + b)``, fused into the product's launch each
    way. ``residual``: the position(s) of x passed on, likewise. Returns the outputs and that view of x.

    Why one function: the layers' input gradients and the residual's gradient all meet at x, and autograd
    would sum them with an addition each (and a zero-filled slice backward for a row). Here the products
    add into one gradient buffer as they write it (``kernels.matmul``'s ``add`` and ``out``): they cost
    their launches alone."""
    L = x.shape[-2]
    plan = tuple((None if pos is None else pos % L, act) for _, pos, act in layers)
    residual = None if residual is None else residual % L
    *outs, kept = _Linears.apply(x, _active[-1], plan, residual,
                                 *(t for module, _, _ in layers for t in (module.weight, module.bias)))
    return outs, kept


_NO_RESIDUAL = "none"  # (``residual`` for a plain linear layer, whose input goes on nowhere else)


def _rows(t: torch.Tensor, pos: int | None) -> torch.Tensor:
    return t if pos is None else t[..., pos:pos + 1, :]


class _Linears(torch.autograd.Function):
    """Linear layers on one input x: outputs, then x's residual view unless ``_NO_RESIDUAL`` (see fan_out)."""

    @staticmethod
    def forward(ctx, x, pending, plan, residual, *params):
        import kernels  # (here, not at the top: the torch backend never imports Triton)

        dtype = _compute_dtype(x)
        xc = x.to(dtype)  # under autocast, one cast of x serves every layer
        runs = params[0].dim() == 3
        ws = [w.to(dtype) for w in params[0::2]]
        bs = [None if b is None else b.to(dtype) for b in params[1::2]]
        # the first two layers reading every position with one weight layout (k and v; q and k where q reads every
        # row): one launch for both -- and a third layer without activation in it too, on its own rows (q at the
        # readout row)
        xs = [_flat(_rows(xc, pos), runs) for pos, _ in plan]  # each layer's rows of x, as its operand
        fan = _pair([i for i, (pos, act) in enumerate(plan) if pos is None and act is None],
                    lambda i, j: kernels.matmul_fits_fan(ws[i], bs[i], ws[j], bs[j]))
        third = None if fan is None else next(
            (t for t, (_, act) in enumerate(plan) if t not in fan and act is None
             and kernels.matmul_fits_fan(ws[fan[0]], bs[fan[0]], ws[t], bs[t], layers=3, a=xs[fan[0]], a3=xs[t])),
            None)
        outs, saved = [None] * len(plan), [xc] + [None] * (2 * len(plan))
        for i, (pos, act) in enumerate(plan):
            xi, w, pre = xs[i], ws[i], None
            if fan and i in (fan[1], third):
                continue  # (made with fan[0])
            if fan and i == fan[0]:
                j = fan[1]
                more = None if third is None else (xs[third], ws[third].transpose(-1, -2), bs[third])
                y, outs[j], *rest = kernels.matmul_fan(xi, w.transpose(-1, -2), bs[i], ws[j].transpose(-1, -2), bs[j],
                                                       third=more)
                saved[1 + 2 * j] = ws[j]
                if third is not None:
                    outs[third], saved[1 + 2 * third] = rest[0], ws[third]
            elif act is None:
                y = kernels.matmul(xi, w.transpose(-1, -2), bs[i])  # the tensor cores, a pack in one launch
            else:
                y, pre = kernels.matmul(xi, w.transpose(-1, -2), bs[i], act)
            saved[1 + 2 * i:3 + 2 * i] = [w, pre]
            outs[i] = y
        outs = [y.view(*_rows(xc, pos).shape[:-1], y.shape[-1]) for y, (pos, _) in zip(outs, plan)]
        ctx.save_for_backward(*saved)
        ctx.set_materialize_grads(False)  # an output the loss does not read gets None, not zeros to multiply
        ctx.plan, ctx.residual, ctx.pending, ctx.params, ctx.x_dtype = plan, residual, pending, params, x.dtype
        if residual == _NO_RESIDUAL:
            return tuple(outs)
        kept = _rows(x, residual)
        return (*outs, kept.view_as(kept))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, *grads):
        import kernels

        xc, *saved = ctx.saved_tensors
        plan, runs, want_dx = ctx.plan, ctx.params[0].dim() == 3, ctx.needs_input_grad[0]
        g_res = None if ctx.residual == _NO_RESIDUAL else grads[-1]
        if g_res is not None and g_res.dtype != ctx.x_dtype:
            g_res = g_res.to(ctx.x_dtype)
        dx = None
        # every-position layers first (the first one writes dx whole), then the rows, which add into theirs; an
        # output the loss does not read has no gradient, and its layer no weight gradient
        order = [i for i in sorted(range(len(plan)), key=lambda i: plan[i][0] is not None) if grads[i] is not None]
        dys = {i: _operand(grads[i], runs, saved[2 * i].dtype) for i in order}
        # the first two every-position layers without activation (k and v, as forward): dx = dk Wk + dv Wv in one
        # launch
        pair = _pair([i for i in order if plan[i] == (None, None)],
                     lambda i, j: kernels.matmul_fits_pair(dys[i], saved[2 * i], dys[j], saved[2 * j]))
        for i in order:
            (pos, act), dy2 = plan[i], dys[i]
            w, pre = saved[2 * i], saved[2 * i + 1]
            if want_dx and pair and i == pair[1]:  # (its product made with pair[0]'s)
                ctx.pending.items.append((_flat(xc, runs), dy2, ctx.params[2 * i], ctx.params[2 * i + 1]))
                continue
            out, add = None, ()
            if want_dx:
                whole = dx is None and pos is None  # the first product writes dx whole; the others add to it
                if dx is None:
                    dx = (torch.empty if whole else torch.zeros)(xc.shape, dtype=ctx.x_dtype, device=xc.device)
                out = _flat(_rows(dx, pos), runs)
                add = () if whole else (out,)
                if g_res is not None and ctx.residual == pos:
                    add, g_res = (*add, _flat(g_res, runs)), None
            if act is None:
                if want_dx:
                    two = None if not pair or i != pair[0] else (dys[pair[1]], saved[2 * pair[1]])
                    kernels.matmul(dy2, w, add=add, out=out, pair=two)
            else:  # the product's gradient, dy act'(pre), comes from the same launch
                _, dy2 = kernels.matmul_act_grad(dy2, pre, w, act, add=add, out=out)
            ctx.pending.items.append((_flat(_rows(xc, pos), runs), dy2, ctx.params[2 * i], ctx.params[2 * i + 1]))
        if g_res is not None and want_dx:  # a residual whose rows no product wrote (no model makes one)
            if dx is None:
                dx = torch.zeros(xc.shape, dtype=ctx.x_dtype, device=xc.device)
            _rows(dx, ctx.residual).add_(g_res)
        return (dx, None, None, None, *([None] * len(ctx.params)))


def _pair(candidates: list[int], fits) -> tuple[int, int] | None:
    """The first two of ``candidates`` that ``fits(i, j)`` accepts, or None."""
    for n, i in enumerate(candidates):
        for j in candidates[n + 1:]:
            if fits(i, j):
                return i, j
    return None


def _operand(dy: torch.Tensor, runs: bool, dtype: torch.dtype) -> torch.Tensor:
    """An output's gradient as a product's operand: flat rows, contiguous along them, in the weight's dtype."""
    dy2 = _flat(dy, runs)
    if dy2.stride(-1) != 1:
        dy2 = dy2.contiguous()
    return dy2.to(dtype)


def linear_norm(x: torch.Tensor, linear: nn.Module, norm: nn.Module, residual: torch.Tensor) -> torch.Tensor:
    """``norm(linear(x) + residual)``: post-LN's projection, add and normalise, the forward in one launch
    (``kernels.matmul_layer_norm``) where it took a product and a LayerNorm; the backward likewise, the
    LayerNorm's backward computed as the product's input gradient loads it (``kernels.matmul_layer_norm_grad``;
    under autocast, where dy and W differ in dtype, LayerNorm's kernel and then the product), the product's
    weight gradient and the sums of the LayerNorm's partials for its weight and bias deferred to the
    weight-gradient launch. For rows of up to
    ``kernels.matmul.MAX_NORM_N``; ``fits_linear_norm`` says whether a layer qualifies."""
    return _LinearNorm.apply(x, residual, _active[-1], float(norm.eps), linear.weight, linear.bias, norm.weight,
                             norm.bias)


def fits_linear_norm(linear: nn.Module, norm: nn.Module) -> bool:
    import kernels

    return (linear.bias is not None and norm.weight is not None and norm.bias is not None
            and linear.weight.shape[-2] <= kernels.MAX_NORM_N)


class _LinearNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, residual, pending, eps, weight, bias, ln_weight, ln_bias):
        import kernels

        dtype = _compute_dtype(x)
        runs = weight.dim() == 3
        x2 = _flat(x.to(dtype), runs)
        w = weight.to(dtype)
        r = residual if residual.dtype in (dtype, torch.float32) else residual.float()
        y, z, mean, rstd = kernels.matmul_layer_norm(x2, w.transpose(-1, -2), bias.to(dtype), _flat(r, runs),
                                                     ln_weight, ln_bias, eps)
        ctx.save_for_backward(x2, w, z, ln_weight, mean, rstd)
        ctx.pending, ctx.params, ctx.norm = pending, (weight, bias), (ln_weight, ln_bias)  # (the parameters)
        ctx.shapes = (x.shape, x.dtype, residual.shape, residual.dtype)
        return y.view(*residual.shape[:-1], y.shape[-1])

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        import kernels

        x2, w, z, ln_w, mean, rstd = ctx.saved_tensors
        x_shape, x_dtype, r_shape, r_dtype = ctx.shapes
        runs = w.dim() == 3
        dx = torch.empty(x_shape, dtype=x_dtype, device=z.device)
        # the LayerNorm's weight and bias gradients are its programs' partial sums, summed with the deferred rest
        dy2 = _flat(dy, runs)
        if dy2.dtype == z.dtype == w.dtype == x_dtype:  # (not under autocast) the LayerNorm's backward in the product
            _, dz, part_w, part_b = kernels.matmul_layer_norm_grad(dy2, z, ln_w, mean, rstd, w, out=_flat(dx, runs))
            dz2 = dz
        else:
            dz, part_w, part_b = kernels.layer_norm_backward(z, ln_w, mean, rstd, dy, reduce=False)
            dz2 = dz.to(w.dtype)
            kernels.matmul(dz2, w, out=_flat(dx, runs))
        ctx.pending.items.append((x2, dz2, *ctx.params))
        for part, p, need in zip((part_w, part_b), ctx.norm, ctx.needs_input_grad[6:]):
            if need:
                ctx.pending.items.append((None, part, None, p))
        return dx, dz.view(r_shape).to(r_dtype), None, None, None, None, None, None


def token_position_embedding(ids: torch.Tensor, tok: nn.Parameter, pos: nn.Parameter) -> torch.Tensor:
    """``tok[ids] + pos[:L]`` (``kernels.token_position_embedding``), whose backward writes the tables'
    gradients into their places in ``into`` (an embedding's gradient is not deferred: it is made last)."""
    return _TokenPosition.apply(ids, _active[-1], tok, pos)


class _TokenPosition(torch.autograd.Function):
    @staticmethod
    def forward(ctx, ids, pending, tok, pos):
        import kernels

        ctx.save_for_backward(ids)
        ctx.pending, ctx.tables = pending, (tok, pos)
        return kernels.token_position_embedding(ids, tok, pos)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dx):
        import kernels

        (ids,) = ctx.saved_tensors
        need = ctx.needs_input_grad[2:]
        if not any(need):
            return None, None, None, None
        # a table that holds a gradient already (none does in a step) gets a fresh one, for autograd to add
        outs = [ctx.pending.home(t) if n and t.grad is None else torch.empty_like(t) for t, n in zip(ctx.tables, need)]
        kernels.token_position_embedding_backward(ids, dx, *outs)
        grads = []
        for t, g, n in zip(ctx.tables, outs, need):
            if not n:
                g = None
            elif t.grad is None:  # set here, not through autograd, which would copy a view that breaks its
                t.grad, g = g, None  # layout contract (a pack's run-strided table)
            grads.append(g)
        return None, None, *grads


def embedding_layer_norm(ids: torch.Tensor, word: nn.Embedding, pos: nn.Embedding, typ: nn.Embedding,
                         ln: nn.LayerNorm) -> torch.Tensor:
    """BERT's embedding block, every token type 0 (``kernels.embedding_layer_norm_forward``), whose backward adds
    the word gradient into its place in ``into`` and leaves the sums of its partials -- the position rows, type
    row 0 (zeros past them) and the LayerNorm's weight and bias -- to the weight-gradient launch: no gradient of
    the block's own for the optimiser to gather (15.6 MB for the paper's word table), and no sums or pads."""
    return _EmbeddingLayerNorm.apply(ids, _active[-1], word.padding_idx, float(ln.eps), word.weight, pos.weight,
                                     typ.weight, ln.weight, ln.bias)


class _EmbeddingLayerNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, ids, pending, padding_idx, eps, word, pos, typ, ln_weight, ln_bias):
        import kernels

        y, mean, rstd = kernels.embedding_layer_norm_forward(ids, word, pos, typ, ln_weight, ln_bias, eps)
        ctx.save_for_backward(ids, mean, rstd)
        ctx.pending, ctx.padding_idx, ctx.params = pending, padding_idx, (word, pos, typ, ln_weight, ln_bias)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        import kernels

        ids, mean, rstd = ctx.saved_tensors
        word, pos, typ, ln_weight, ln_bias = ctx.params
        need = ctx.needs_input_grad[4:]
        if not any(need):
            return (None,) * 9
        # the word gradient: the kernel's atomics add into the gradient the table holds, or into zeros in its
        # home (a gradient it cannot add into gets a fresh one, for autograd to add; a frozen table, scratch)
        from kernels.fused_embedding import word_grad_fits

        held = need[0] and word.grad is not None and word_grad_fits(word.grad, word)
        in_place = held or (need[0] and word.grad is None)
        if held:
            dword = word.grad
        else:
            dword = (ctx.pending.home(word) if in_place else torch.empty_like(word, dtype=torch.float32)).zero_()
        parts = kernels.embedding_layer_norm_backward(dy, ids, word, pos, typ, ln_weight, mean, rstd,
                                                      padding_idx=ctx.padding_idx, dword=dword, reduce=False)
        if in_place:
            word.grad = dword
        # (each partial (P, C) or a pack's (R, P, C); the position slabs' rows flattened: one row of the sum each)
        sums = ((parts.pos.flatten(-2), pos), (parts.type0, typ), (parts.ln_weight, ln_weight), (parts.ln_bias, ln_bias))
        for (part, p), n in zip(sums, need[1:]):
            if n:
                ctx.pending.items.append((None, part, None, p))
        return (None,) * 4 + (None if in_place or not need[0] else dword,) + (None,) * 4


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The products' operand dtype: autocast's where it is on (bf16, as F.linear computes there), else x's."""
    return torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype


def _flat(t: torch.Tensor, runs: bool) -> torch.Tensor:
    """(..., C) -> the product's operand: (rows, C), or a pack's (R, rows, C); a view where strides allow."""
    return t.reshape(t.shape[0], -1, t.shape[-1]) if runs else t.reshape(-1, t.shape[-1])


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters, same state dict) that defers its weight gradient inside ``deferred()``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias) if active() else super().forward(x)
