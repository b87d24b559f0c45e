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

    with deferred(on=backend == "triton"):
        loss = model(x) ...
        loss.backward()
    # every parameter's .grad is complete here

The products themselves are ``kernels.matmul`` (fp32 on the tensor cores in tf32x3, a pack's runs in one
launch). Under bf16 autocast a layer computes in bf16, as ``F.linear`` does there, and its weight gradient lands
in fp32 in the fp32 parameter's ``.grad``.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

_active: list["_Pending"] = []


class _Pending:
    """The (x, dy) of every deferred layer since the block began, and where their gradients go."""

    def __init__(self):
        self.items: list[tuple[torch.Tensor, torch.Tensor, nn.Parameter, nn.Parameter | None]] = []

    def flush(self) -> None:
        import kernels

        # A parameter used twice (a table projected twice) must not be written by two programs of one
        # launch: its second use waits for a later wave, which adds to what the first wrote.
        waves: list[list] = []
        for item in self.items:
            wave = next((w for w in waves if all(item[2] is not other[2] for other in w)), None)
            if wave is None:
                waves.append(wave := [])
            wave.append(item)
        for wave in waves:
            problems, fresh = [], {}
            for x, dy, weight, bias in wave:
                params = [p for p in (weight, bias) if p is not None]
                # a gradient already there (the tied embedding's): add to it; one flag serves a layer's
                # weight and bias, so if only one holds a gradient the other adds to zeros
                add = any(p.grad is not None for p in params)
                for p in params:
                    if add and p.grad is None:
                        p.grad = torch.zeros_like(p)
                dw, db = ((p.grad if add else fresh.setdefault(p, torch.empty_like(p)))
                          if p is not None else None for p in (weight, bias))
                problems.append(kernels.WeightGrad(x, dy, dw, db, add))
            kernels.linear_weight_grads(problems)
            for p, g in fresh.items():
                p.grad = g
        self.items.clear()


def active() -> bool:
    return bool(_active)


@contextlib.contextmanager
def deferred(on: bool = True) -> Iterator[None]:
    """Within the block, linear layers defer their weight gradients; at its end they are computed (above)."""
    if not on:
        yield
        return
    pending = _Pending()
    _active.append(pending)
    try:
        yield
    finally:
        _active.remove(pending)
    pending.flush()


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
           gelu: str | None = None) -> torch.Tensor:
    """``x Wᵀ + b`` for W (N, K), or a pack's (R, N, K) with x (R, ..., K); deferring inside ``deferred()``.
    ``gelu`` ("none" or "tanh", F.gelu's ``approximate``): ``GELU(x Wᵀ + b)``, the GELU fused into the
    product's launch and its gradient into the input gradient's."""
    return _DeferredLinear.apply(x, weight, bias, _active[-1], gelu)


class _DeferredLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, pending, gelu):
        import kernels  # (here, not at the top: the torch backend never imports Triton)

        dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype
        runs = weight.dim() == 3
        x2 = (x.reshape(x.shape[0], -1, x.shape[-1]) if runs else x.reshape(-1, x.shape[-1])).to(dtype)
        w = weight.to(dtype)
        b = None if bias is None else bias.to(dtype)
        y = kernels.matmul(x2, w.transpose(-1, -2), b, gelu)  # the tensor cores, a pack in one launch
        y, pre = (y, None) if gelu is None else y
        ctx.save_for_backward(x2, w, pre)
        ctx.params, ctx.pending, ctx.x_shape, ctx.x_dtype, ctx.gelu = (weight, bias), pending, x.shape, x.dtype, gelu
        return y.view(*x.shape[:-1], y.shape[-1])

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        import kernels

        x2, w, pre = ctx.saved_tensors
        dy2 = dy.reshape(*x2.shape[:-1], dy.shape[-1])
        if dy2.stride(-1) != 1:
            dy2 = dy2.contiguous()
        dy2 = dy2.to(w.dtype)
        if ctx.gelu is None:
            dx = kernels.matmul(dy2, w) if ctx.needs_input_grad[0] else None
        else:  # the product's gradient, dy GELU'(pre), comes from the same launch as dx
            dx, dy2 = kernels.matmul_gelu_grad(dy2, pre, w, ctx.gelu)
        ctx.pending.items.append((x2, dy2, *ctx.params))
        dx = dx.view(ctx.x_shape).to(ctx.x_dtype) if ctx.needs_input_grad[0] else None
        return dx, None, None, None, None


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters, same state dict) that defers its weight gradient inside ``deferred()``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias) if active() else super().forward(x)
