"""An embedding table's rows gathered, and the gradient of that gather, on the torch backend.

The gradient of ``table[ids]`` is dense: zeros, then each id's row gradient added into its row, in id
order. ATen's ``embedding_dense_backward`` does that on the CPU by dispatching every row's addition
through a TensorIterator, ~150 ns of overhead per id: 5.4 of the ~27 ms of the paper's IMDB step on one
thread (32,768 ids). ``index_add_`` adds each row with one vectorised loop, in the same order, so the
same bits (for fp32 tables, the models' own) in less than half the time. On CUDA ``index_add_`` adds with atomics in whatever order they
land, so there the sorted, deterministic ``embedding_dense_backward`` stays. The models' solo tables are
``Embedding`` (an ``nn.Embedding`` whose backward is this), a pack's gather its own (``runs.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def rows_grad(dy: torch.Tensor, ids: torch.Tensor, n_rows: int, padding_idx: int | None = None,
              dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The (n_rows, C) gradient, of ``dtype`` (the table's), of gathering rows ``ids`` (any shape) given ``dy``
    (ids.shape + (C,)); the row ``padding_idx`` (if any) gets none, as in ``nn.Embedding``."""
    C = dy.shape[-1]
    dy, ids = dy.reshape(-1, C).to(dtype), ids.reshape(-1)
    if dy.device.type != "cpu":
        return torch.ops.aten.embedding_dense_backward(dy, ids, n_rows, -1 if padding_idx is None else padding_idx,
                                                       False)
    grad = torch.zeros(n_rows, C, dtype=dtype, device=dy.device)
    grad.index_add_(0, ids, dy)
    if padding_idx is not None:
        grad[padding_idx] = 0
    return grad


def gather(table: torch.Tensor, ids: torch.Tensor, padding_idx: int | None = None) -> torch.Tensor:
    """``F.embedding(ids, table, padding_idx)`` for a (V, C) table, its backward ``rows_grad``."""
    return _Rows.apply(table, ids, padding_idx)


class _Rows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, table: torch.Tensor, ids: torch.Tensor, padding_idx: int | None) -> torch.Tensor:
        ctx.save_for_backward(ids)
        ctx.n_rows, ctx.padding_idx, ctx.dtype = table.shape[0], padding_idx, table.dtype
        return F.embedding(ids, table)

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        (ids,) = ctx.saved_tensors
        return rows_grad(dy, ids, ctx.n_rows, ctx.padding_idx, ctx.dtype), None, None


class Embedding(nn.Embedding):
    """``nn.Embedding`` (same parameters, same state dict) whose backward is ``rows_grad``: a plain table, so
    ``max_norm``, ``scale_grad_by_freq`` and ``sparse`` are refused rather than ignored."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.max_norm is not None or self.scale_grad_by_freq or self.sparse:
            raise ValueError("Embedding: max_norm, scale_grad_by_freq and sparse are not supported (use nn.Embedding)")

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return gather(self.weight, ids, self.padding_idx)
