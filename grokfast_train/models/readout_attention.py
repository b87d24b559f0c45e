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

The torch backend's path (``Block``); the triton backend keeps its fused projections and attention kernels.
"""

from __future__ import annotations

import torch


def readout_attention(q: torch.Tensor, x: torch.Tensor, k_weight: torch.Tensor, k_bias: torch.Tensor,
                      v_weight: torch.Tensor, v_bias: torch.Tensor, heads: int,
                      mask: torch.Tensor | None = None) -> torch.Tensor:
    """``attention(q, x Wkᵀ + bk, x Wvᵀ + bv)`` over ``heads`` heads, heads merged: q (..., 1, C), the query
    row's projection; x (..., L, C), the layer's input at the keys' positions; mask bool (..., L), True at keys
    that take part (a query with none gets 0, as ``ops.attention``'s). Weights (C, C) and biases (C,), or a
    pack's (R, C, C) and (R, C) with x (R, B, L, C). -> (..., 1, C)."""
    C = x.shape[-1]
    D = C // heads
    r = "r" if k_weight.dim() == 3 else ""  # a pack: run r's rows meet run r's weights
    wk = k_weight.unflatten(-2, (heads, D))  # (R?, H, D, C): head h's rows of W
    wv = v_weight.unflatten(-2, (heads, D))
    qh = q.reshape(*x.shape[:-2], heads, D) * D ** -0.5  # (..., H, D)
    q_in = torch.einsum(f"{r}bhd,{r}hdc->{r}bhc", qh, wk)  # the query in x's space, per head
    q_bk = (qh * _per_run(k_bias, r).unflatten(-1, (heads, D))).sum(-1)  # (..., H), the same for every key
    scores = torch.einsum(f"{r}bhc,{r}blc->{r}bhl", q_in, x) + q_bk.unsqueeze(-1)
    if mask is not None:  # (a query with no key: its scores left finite, its output 0 -- no NaN either way)
        seen = mask.any(-1)[..., None, None]
        scores = scores.masked_fill(~mask.unsqueeze(-2) & seen, float("-inf"))
    p = scores.softmax(-1)
    mixed = torch.einsum(f"{r}bhl,{r}blc->{r}bhc", p, x)  # Σ_j p_j x_j per head
    out = torch.einsum(f"{r}bhc,{r}hdc->{r}bhd", mixed, wv) + _per_run(v_bias, r).unflatten(-1, (heads, D))
    if mask is not None:
        out = torch.where(seen, out, 0.0)
    return out.flatten(-2).unsqueeze(-2)


def _per_run(bias: torch.Tensor, r: str) -> torch.Tensor:
    """A bias broadcast over the batch: (C,), or a pack's (R, C) as (R, 1, C)."""
    return bias.unsqueeze(-2) if r else bias
