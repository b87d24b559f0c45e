"""Attention for one query row, without projecting the keys or the values.

The last layer's attention reads one query per sequence (the readout row). Its scores and its output are
linear in the layer's input x, so per head h the key and value projections can move to the query's side:

    q·k_j = q·(Wk x_j + bk) = (Wkᵀ q)·x_j + q·bk
    Σ_j p_j v_j = Wv (Σ_j p_j x_j) + bv                  (Σ_j p_j = 1)

So no key or value is made: per sequence the scores are x (L, C) times the query mapped back into x's
space (C, H), and the output mixes x's rows by the weights, (H, L) @ (L, C), before one value projection
per head. Keys and values cost 2·B·L·C² multiply-adds forward (and twice that backward); this costs
~2·B·L·C·H (H heads: 32× fewer at the paper's width 128 and 4 heads) -- at IMDB's 256 positions, most of a
CPU step. The same function (tests/trainer/test_models.py checks it against every position computed and
against transformers' models), rounded in another order. ``q·bk`` is kept although softmax ignores it (it
is the same for every key), so that bk's gradient is what the projected keys give it: zero up to rounding.

The backward is written out (``_ReadoutAttention``) so that x's gradient is one product, both of x's uses
at once, with the residual's gradient at the query row added in place -- where autograd would add three
tensors of x's size (the two uses and the row's zero-padded slice).

``backend="triton"`` runs the same identity as one kernel each way (``kernels.readout_attention``: the query,
the scores, softmax, the mix and the value projection in one launch forward; x's gradient, its row's included,
and the query's in one launch backward), and leaves the weight gradients to the step's weight-gradient launch
inside ``deferred()`` (``_ReadoutKernels``): where ``fits`` says, sequences of at least
``kernels.readout_attention.MIN_KEYS`` positions (IMDB's 256, not the modular task's 6) of widths up to ``MAX_C``.
"""

from __future__ import annotations

import torch

from . import deferred


def readout_attention(x: torch.Tensor, q_weight: torch.Tensor, q_bias: torch.Tensor, k_weight: torch.Tensor,
                      k_bias: torch.Tensor, v_weight: torch.Tensor, v_bias: torch.Tensor, heads: int,
                      mask: torch.Tensor | None = None, row: int = 0,
                      backend: str = "torch") -> tuple[torch.Tensor, torch.Tensor]:
    """``attention(q, x Wkᵀ + bk, x Wvᵀ + bv)`` over ``heads`` heads, heads merged, for the one query
    ``q = x[..., row, :] Wqᵀ + bq``; and that row of x as the residual. x (..., L, C), the layer's input at the
    keys' positions; mask bool (..., L), True at keys that take part (a query with none gets 0, as
    ``ops.attention``'s). Weights (C, C) and biases (C,), or a pack's (R, C, C) and (R, C) with x (R, B, L, C).
    -> ((..., 1, C), ``x[..., row:row + 1, :]``), the second a view whose gradient joins x's in one tensor."""
    if backend == "triton":
        pending = deferred._active[-1] if deferred.active() else None
        return _ReadoutKernels.apply(x, pending, heads, mask, row, q_weight, q_bias, k_weight, k_bias, v_weight,
                                     v_bias)
    return _ReadoutAttention.apply(x, q_weight, q_bias, k_weight, k_bias, v_weight, v_bias, heads, mask, row)


def fits(hidden: int, heads: int, keys: int) -> bool:
    """Whether the triton backend runs a readout layer of this shape through its kernels (else it projects keys
    and values): ``kernels.readout_attention.fits``, wide sequences of a narrow model."""
    from kernels.readout_attention import fits as kernel_fits

    return kernel_fits(hidden, heads, keys)


class _ReadoutAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, wq, bq, wk, bk, wv, bv, heads, mask, row):
        C = x.shape[-1]
        D = C // heads
        r = "r" if wk.dim() == 3 else ""  # a pack: run r's rows meet run r's weights
        x_row = x[..., row, :]
        q = torch.einsum(f"{r}bc,{r}oc->{r}bo", x_row, wq) + _per_run(bq, r)
        wk, wv = wk.unflatten(-2, (heads, D)), wv.unflatten(-2, (heads, D))  # (R?, H, D, C): head h's rows
        bk, bv = (_per_run(b, r).unflatten(-1, (heads, D)) for b in (bk, bv))
        qh = q.unflatten(-1, (heads, D)) * D ** -0.5  # (..., H, D)
        q_in = torch.einsum(f"{r}bhd,{r}hdc->{r}bhc", qh, wk)  # the query in x's space, per head
        scores = torch.einsum(f"{r}bhc,{r}blc->{r}bhl", q_in, x) + (qh * bk).sum(-1, keepdim=True)  # + q·bk
        seen = None
        if mask is not None:  # (a query with no key: its scores left finite, its output 0 -- no NaN either way)
            seen = mask.any(-1)[..., None, None]
            scores = scores.masked_fill(~mask.unsqueeze(-2) & seen, float("-inf"))
        p = scores.softmax(-1)
        mixed = torch.einsum(f"{r}bhl,{r}blc->{r}bhc", p, x)  # Σ_j p_j x_j per head
        out = torch.einsum(f"{r}bhc,{r}hdc->{r}bhd", mixed, wv) + bv
        if seen is not None:
            out = torch.where(seen, out, 0.0)
        ctx.save_for_backward(x, wq, wk, bk, wv, qh, q_in, p, mixed, seen)
        ctx.r, ctx.row = r, row
        kept = x[..., row:row + 1, :]
        return out.flatten(-2).unsqueeze(-2), kept.view_as(kept)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, d_out, d_row):
        *saved, seen = ctx.saved_tensors
        r, row, need = ctx.r, ctx.row, ctx.needs_input_grad
        # in the widest dtype among them (under autocast the forward's products were bf16; this runs without)
        dtype = _widest(*saved, d_out, d_row)
        x, wq, wk, bk, wv, qh, q_in, p, mixed = (t.to(dtype) for t in saved)
        H, D = wk.shape[-3:-1]
        batch = f"{r}h"  # (the weights' gradients sum over the batch)
        grads = [None] * 10
        if d_out is None:
            d_out = x.new_zeros(*x.shape[:-2], 1, H * D)
        dy = d_out.to(dtype).reshape(*x.shape[:-2], H, D)
        if seen is not None:
            dy = torch.where(seen, dy, 0.0)
        grads[6] = dy.sum(-3).flatten(-2) if need[6] else None
        grads[5] = torch.einsum(f"{r}bhd,{r}bhc->{batch}dc", dy, mixed).flatten(-3, -2) if need[5] else None
        d_mixed = torch.einsum(f"{r}bhd,{r}hdc->{r}bhc", dy, wv)
        dp = torch.einsum(f"{r}bhc,{r}blc->{r}bhl", d_mixed, x)
        ds = p * (dp - (dp * p).sum(-1, keepdim=True))  # softmax's backward; 0 at masked keys (p = 0)
        d_qbk = ds.sum(-1, keepdim=True)  # (..., H, 1): q·bk's gradient, zero up to rounding
        d_q_in = torch.einsum(f"{r}bhl,{r}blc->{r}bhc", ds, x)
        dq = ((torch.einsum(f"{r}bhc,{r}hdc->{r}bhd", d_q_in, wk) + d_qbk * bk) * D ** -0.5).flatten(-2)
        x_row = x[..., row, :]
        grads[1] = torch.einsum(f"{r}bo,{r}bc->{r}oc", dq, x_row) if need[1] else None
        grads[2] = dq.sum(-2) if need[2] else None
        grads[3] = torch.einsum(f"{r}bhd,{r}bhc->{batch}dc", qh, d_q_in).flatten(-3, -2) if need[3] else None
        grads[4] = (d_qbk * qh).sum(-3).flatten(-2) if need[4] else None
        if need[0]:  # x's uses in one product -- p mixes it, the scores read it by q_in -- and its row's added in
            dx = torch.einsum(f"{r}bhl,{r}bhc->{r}blc", torch.cat([p, ds], -2), torch.cat([d_mixed, q_in], -2))
            dx[..., row, :] += torch.einsum(f"{r}bo,{r}oc->{r}bc", dq, wq)  # the query's projection
            if d_row is not None:
                dx[..., row:row + 1, :] += d_row.to(dtype)  # the residual
            grads[0] = dx
        return tuple(grads)


class _ReadoutKernels(torch.autograd.Function):
    """The triton backend's readout attention: ``kernels.readout_attention``'s two launches; the weight gradients
    as four (x, dy) problems of the weight-gradient launch (inside ``deferred()``; else computed here)."""

    @staticmethod
    def forward(ctx, x, pending, heads, mask, row, wq, bq, wk, bk, wv, bv):
        from kernels.readout_attention import readout_attention_forward

        L, C = x.shape[-2:]
        xs = x.reshape(-1, L, C)  # a pack's runs one after another: run r's B sequences meet its weights
        masks = None if mask is None else mask.reshape(-1, L)
        saved = readout_attention_forward(xs, row, wq, bq, wk, bk, wv, bv, heads, masks)
        ctx.save_for_backward(xs, masks, *saved[1:])
        ctx.pending, ctx.heads, ctx.row, ctx.shape, ctx.params = pending, heads, row, x.shape, (wq, bq, wk, bk, wv, bv)
        kept = x[..., row:row + 1, :]
        return saved.out.view(*x.shape[:-2], 1, C).to(x.dtype), kept.view_as(kept)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, d_out, d_row):
        import kernels
        from kernels.readout_attention import Saved, readout_attention_backward

        xs, masks, *rest = ctx.saved_tensors
        N, L, C = xs.shape
        wq, bq, wk, bk, wv, bv = ctx.params
        if d_out is None:
            d_out = xs.new_zeros(N, C)
        saved = Saved(None, *rest)
        g = readout_attention_backward(d_out.reshape(N, C), None if d_row is None else d_row.reshape(N, C), xs,
                                       ctx.row, saved, wq, wk, bk, wv, ctx.heads, masks)
        # the weight gradients as linear layers' (x, dy) pairs over rows, (R, rows, C) for a pack; a bias alone is
        # a sum (no x); what needs no gradient is left out
        runs = (wq.shape[0],) if wq.dim() == 3 else ()
        need = dict(zip(ctx.params, ctx.needs_input_grad[5:]))
        problems = []
        for a, dy, w, b in ((xs[:, ctx.row], g.dq, wq, bq), (g.d_q_in, g.q_heads, wk, None),
                            (None, g.bk_rows, None, bk), (saved.mixed, g.dout_heads, wv, bv)):
            w, b = (p if p is not None and need[p] else None for p in (w, b))
            if w is not None or b is not None:
                problems.append((a.float().reshape(*runs, -1, C) if w is not None else None,
                                 dy.reshape(*runs, -1, C), w, b))
        grads = {}
        if ctx.pending is not None:
            ctx.pending.items.extend(problems)
        else:
            made = []
            for a, dy, w, b in problems:
                dw, db = (None if p is None else torch.empty_like(p, dtype=torch.float32) for p in (w, b))
                made.append(kernels.WeightGrad(a, dy, dw, db))
                grads.update({p: t for p, t in ((w, dw), (b, db)) if p is not None})
            kernels.linear_weight_grads(made)
        dx = g.dx.view(ctx.shape).to(xs.dtype) if ctx.needs_input_grad[0] else None
        return (dx, None, None, None, None, *(grads.get(p) for p in ctx.params))


def _widest(*tensors: torch.Tensor | None) -> torch.dtype:
    """The dtype every one of the given tensors promotes to (Nones skipped)."""
    dtypes = [t.dtype for t in tensors if t is not None]
    widest = dtypes[0]
    for d in dtypes[1:]:
        widest = torch.promote_types(widest, d)
    return widest


def _per_run(bias: torch.Tensor, r: str) -> torch.Tensor:
    """A bias broadcast over the batch: (C,), or a pack's (R, C) as (R, 1, C)."""
    return bias.unsqueeze(-2) if r else bias
