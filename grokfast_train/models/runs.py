"""Layers with a leading run axis: R independent copies of a layer, applied in one op each.

A pack of R runs (``grokfast_train/pack.py``) is one model whose every parameter is stacked (R, ...):
``RunLinear`` is R ``nn.Linear`` as one batched matrix product, ``RunLayerNorm`` R LayerNorms (one
per run's rows), ``RunEmbedding`` R embedding tables gathered in one indexing op. Activations carry
the run axis first, (R, batch, ...), and run r's activations only ever meet run r's weights, so the
runs stay independent: run r's gradients are exactly those of its own loss.

The weights are never initialised here: a pack copies each run's slice from the solo model its run
would have built (``stack_states``), so that a packed run starts exactly where its solo run starts.
The parameter names mirror the solo models' (``layers.0.q.weight`` is (R, out, in) here, (out, in)
there), so one run's weights are ``{name: tensor[r]}`` (``run_state``).
"""

from __future__ import annotations

import torch
from torch import nn

from . import deferred
from .rows import rows_grad


class RunLinear(nn.Module):
    """R linear layers: x (R, ..., in) -> (R, ..., out), run r through weight[r] (out, in) and bias[r]."""

    def __init__(self, runs: int, in_features: int, out_features: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(runs, out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(runs, out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if deferred.active():
            return deferred.linear(x, self.weight, self.bias)
        flat = x.reshape(x.shape[0], -1, x.shape[-1])
        if one_launch(x):
            y = torch.baddbmm(self.bias.unsqueeze(1), flat, self.weight.transpose(1, 2))
        else:
            y = _PerRunLinear.apply(flat, self.weight, self.bias)
        return y.view(*x.shape[:-1], y.shape[-1])


def one_launch(x: torch.Tensor) -> bool:
    """Whether ``RunLinear`` computes all runs in one batched product: on CUDA (and under autocast), where
    launches cost; not on the CPU, which has no launches to save and where R matrix products beat one
    batched product (~18 %)."""
    return x.is_cuda or torch.is_autocast_enabled(x.device.type)


class _PerRunLinear(torch.autograd.Function):
    """``baddbmm(bias, x, weightᵀ)`` as R matrix products written straight into one output, and the
    backward likewise: no stacking copies (the CPU path of ``RunLinear``)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        y = x.new_empty(x.shape[0], x.shape[1], weight.shape[1])
        for r in range(x.shape[0]):
            torch.addmm(bias[r], x[r], weight[r].t(), out=y[r])
        return y

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        x, weight = ctx.saved_tensors
        dy = dy.contiguous()
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            dx = torch.empty_like(x)
            for r in range(x.shape[0]):
                torch.mm(dy[r], weight[r], out=dx[r])
        if ctx.needs_input_grad[1]:
            dw = torch.empty(weight.shape, dtype=weight.dtype, device=weight.device)
            for r in range(x.shape[0]):
                torch.mm(dy[r].t(), x[r], out=dw[r])
        if ctx.needs_input_grad[2]:
            db = dy.sum(1)
        return dx, dw, db


class RunLayerNorm(nn.Module):
    """R LayerNorms over the last dimension; applied through ``ops.layer_norm`` (which fuses the residual)."""

    def __init__(self, runs: int, hidden: int, eps: float):
        super().__init__()
        self.normalized_shape = (hidden,)
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(runs, hidden))
        self.bias = nn.Parameter(torch.zeros(runs, hidden))


def run_layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    """LayerNorm of run r's rows of x (R, ..., C) with weight[r] and bias[r] (the torch backend's)."""
    if (x.device.type == "cpu" and not torch.is_autocast_enabled("cpu") and x.is_contiguous()
            and x.dtype == weight.dtype == bias.dtype == torch.float32):
        return _PerRunLayerNorm.apply(x, weight, bias, eps)
    y = nn.functional.layer_norm(x, x.shape[-1:], None, None, eps)  # one shared normalisation, per-run affine
    return torch.addcmul(per_run(bias, y.dim()), y, per_run(weight, y.dim()))


class _PerRunLayerNorm(torch.autograd.Function):
    """R native LayerNorms writing into one output, forward and backward (``out=`` variants): no
    separate affine pass over the activations, no stacking copies (the CPU path of ``run_layer_norm``)."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        y = torch.empty_like(x)
        mean, rstd = x.new_empty(*x.shape[:-1], 1), x.new_empty(*x.shape[:-1], 1)
        shape = [x.shape[-1]]
        for r in range(x.shape[0]):
            torch.ops.aten.native_layer_norm.out(x[r], shape, weight[r], bias[r], eps, out0=y[r], out1=mean[r],
                                                 out2=rstd[r])
        ctx.save_for_backward(x, weight, bias, mean, rstd)
        return y

    @staticmethod
    def backward(ctx, dy):
        x, weight, bias, mean, rstd = ctx.saved_tensors
        dy = dy.contiguous()
        dx, dw, db = torch.empty_like(x), weight.new_empty(weight.shape), bias.new_empty(bias.shape)
        shape = [x.shape[-1]]
        for r in range(x.shape[0]):
            torch.ops.aten.native_layer_norm_backward.out(dy[r], x[r], shape, mean[r], rstd[r], weight[r], bias[r],
                                                          [True, True, True], out0=dx[r], out1=dw[r], out2=db[r])
        return dx, dw, db, None


class RunEmbedding(nn.Module):
    """R embedding tables: ids (R, ...) -> (R, ..., dim), run r reading table r. ``padding_idx``'s row
    is read as it is but gets no gradient, as in ``nn.Embedding``."""

    def __init__(self, runs: int, num_embeddings: int, dim: int, padding_idx: int | None = None):
        super().__init__()
        self.padding_idx = padding_idx
        self.weight = nn.Parameter(torch.zeros(runs, num_embeddings, dim))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return gather_rows(self.weight, ids, self.padding_idx)


def gather_rows(table: torch.Tensor, ids: torch.Tensor, padding_idx: int | None = None) -> torch.Tensor:
    """``table[r, ids[r]]`` for every run r: a (R, V, C) table and ids (R, ...) -> (R, ..., C)."""
    return _RunRows.apply(table, ids, padding_idx)


def _as_rows(table: torch.Tensor) -> torch.Tensor | None:
    """A (R, V, C) table whose rows are C apart and whose runs are a whole number of rows apart (a
    contiguous table, or PackedAdamW's run-major view) as one 2-D (rows, C) view of its memory, so one
    ``index_select`` gathers for every run; None when the layout does not allow it."""
    R, V, C = table.shape
    if table.stride(2) != 1 or table.stride(1) != C or table.stride(0) % C:
        return None
    n = (R - 1) * (table.stride(0) // C) + V
    return table.as_strided((n, C), (C, 1))


class _RunRows(torch.autograd.Function):
    """``weight[r, ids[r]]`` for every run r; the backward adds each row's gradient into run r's table
    (one ``rows_grad`` over the flattened (R·V) rows) and zeroes ``padding_idx``'s row in every run.
    On CUDA that is ``nn.Embedding``'s backward, which sums each row's gradients in a fixed order (past
    3,072 ids by sorting them, in several kernels), where ``index_add_`` adds them with atomics in
    whatever order they land, so a pack's trajectory could differ in rounding from one execution to
    the next (likely what made a pack's graph and eager runs differ in ``k.bias`` on an H200)."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor, ids: torch.Tensor, padding_idx: int | None) -> torch.Tensor:
        R, V = weight.shape[:2]
        flat = ids + V * torch.arange(R, device=ids.device).view(-1, *[1] * (ids.dim() - 1))
        ctx.save_for_backward(flat)
        ctx.shape, ctx.padding_idx, ctx.dtype = weight.shape, padding_idx, weight.dtype
        rows = _as_rows(weight)
        if rows is None:
            return weight[flat // V, ids]
        step = weight.stride(0) // weight.shape[2]  # rows from one run's table to the next's
        at = flat if step == V else flat + (step - V) * (flat // V)
        return rows.index_select(0, at.flatten()).view(*ids.shape, -1)

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        (flat,) = ctx.saved_tensors
        R, V, C = ctx.shape
        grad = rows_grad(dy, flat, R * V, dtype=ctx.dtype).view(R, V, C)
        if ctx.padding_idx is not None:
            grad[:, ctx.padding_idx] = 0
        return grad, None, None


def per_run(t: torch.Tensor, ndim: int) -> torch.Tensor:
    """A (R, C) per-run vector shaped to broadcast against (R, ..., C) activations of ``ndim`` dims."""
    return t.view(t.shape[0], *[1] * (ndim - 2), t.shape[-1])


def leading_rows(table: torch.Tensor, n: int) -> torch.Tensor:
    """The first ``n`` rows of an embedding table, shaped to add to (..., n, C) activations:
    (n, C) for one run's (V, C) table, (R, 1, n, C) for a pack's (R, V, C)."""
    rows = table[..., :n, :]
    return rows if table.dim() == 2 else rows.unsqueeze(1)


def tied_head(h: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Logits against an embedding table (a tied LM head): h (..., C) -> (..., V)."""
    if deferred.active():
        return deferred.linear(h, table)
    if table.dim() == 2:
        return nn.functional.linear(h, table)
    t = table.transpose(-1, -2)  # (R, C, V)
    while t.dim() < h.dim():
        t = t.unsqueeze(1)
    return torch.matmul(h, t)


def stack_states(solos: list[nn.Module]) -> dict[str, torch.Tensor]:
    """The state dict of a pack whose run r is ``solos[r]``: every tensor stacked on a new first axis."""
    states = [m.state_dict() for m in solos]
    return {k: torch.stack([s[k] for s in states]) for k in states[0]}


def bind_run(solo: nn.Module, packed: nn.Module, r: int) -> nn.Module:
    """``solo`` (a solo model of the pack's shape) pointed at run r of ``packed``: each of its parameters
    becomes a view of run r's slice of the pack's, so its forward reads run r's weights and an update of
    the pack moves it, without a copy. Its gradients stay its own (autograd's fresh tensors)."""
    stacked = dict(packed.named_parameters())
    if list(stacked) != [name for name, _ in solo.named_parameters()]:  # an optimiser pairs them by position
        raise ValueError("bind_run: the solo model's parameters are not the pack's")
    for name, p in solo.named_parameters():
        p.data = stacked[name].data[r]
        p.grad = None
    return solo


def run_state(packed: nn.Module, r: int) -> dict[str, torch.Tensor]:
    """Run r's weights as its solo model's state dict (copies, on the CPU)."""
    return {k: v[r].detach().cpu().clone() for k, v in packed.state_dict().items()}
