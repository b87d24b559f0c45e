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
tensors of x's size (the two uses and the row's zero-padded slice). The torch backend's path (``Block``);
the triton backend keeps its fused projections and attention kernels.
"""

from __future__ import annotations

import torch


def readout_attention(x: torch.Tensor, q_weight: torch.Tensor, q_bias: torch.Tensor, k_weight: torch.Tensor,
                      k_bias: torch.Tensor, v_weight: torch.Tensor, v_bias: torch.Tensor, heads: int,
                      mask: torch.Tensor | None = None, row: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``attention(q, x Wkᵀ + bk, x Wvᵀ + bv)`` over ``heads`` heads, heads merged, for the one query
    ``q = x[..., row, :] Wqᵀ + bq``; and that row of x as the residual. x (..., L, C), the layer's input at the
    keys' positions; mask bool (..., L), True at keys that take part (a query with none gets 0, as
    ``ops.attention``'s). Weights (C, C) and biases (C,), or a pack's (R, C, C) and (R, C) with x (R, B, L, C).
    -> ((..., 1, C), ``x[..., row:row + 1, :]``), the second a view whose gradient joins x's in one tensor."""
    return _ReadoutAttention.apply(x, q_weight, q_bias, k_weight, k_bias, v_weight, v_bias, heads, mask, row)


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
