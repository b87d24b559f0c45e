"""The ops both models route through a backend: attention, LayerNorm with a residual, BERT's embeddings,
and the loss the trainer takes on their logits.

``backend="torch"``: PyTorch's own ops (``F.scaled_dot_product_attention``, ``F.layer_norm``):
the CPU path, and the reference the fused kernels are checked against.
``backend="triton"``: the fused kernels of the ``kernels`` package, same signatures (``check_backend``
imports them, so a model fails at build time rather than at its first step). The kernels themselves
run the Triton code on CUDA tensors and their pure-PyTorch reference on CPU tensors. The loss's torch
path is its kernel module's reference (``kernels.cross_entropy_reference``): the one spec of its
weights and metric sums.
"""

from __future__ import annotations

import importlib

import torch
import torch.nn.functional as F
from torch import nn

from . import deferred
from .runs import leading_rows, run_layer_norm

BACKENDS = ("torch", "triton")


def _kernel(name: str):
    """A public function of the kernels package, imported only when the triton backend is chosen."""
    return getattr(importlib.import_module("kernels"), name)


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of: {', '.join(BACKENDS)}")
    if backend == "triton":
        _kernel("attention"), _kernel("layer_norm"), _kernel("embedding_layer_norm"), _kernel("cross_entropy")
    return backend


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_padding_mask: torch.Tensor | None = None,
              causal: bool = False, backend: str = "torch") -> torch.Tensor:
    """Softmax(q kᵀ / √D) v over heads: q (B, H, Lq, D), k and v (B, H, Lk, D) -> (B, H, Lq, D).

    ``key_padding_mask``: bool (B, Lk), True where the key takes part. ``causal``: bottom-right
    aligned, query i sees keys j <= i + Lk - Lq, so a single query (the readout) sees every key
    it is given. A query that sees no key at all gets 0.
    """
    if key_padding_mask is not None and key_padding_mask.dtype != torch.bool:
        # a float mask would be *added* to the scores by SDPA: refuse rather than mis-mask
        raise TypeError(f"key_padding_mask must be bool (True at real tokens), got {key_padding_mask.dtype}")
    if backend == "triton":
        return _kernel("attention")(q, k, v, key_padding_mask=key_padding_mask, causal=causal)
    Lq, Lk = q.shape[-2], k.shape[-2]
    mask = None
    if causal and Lq > 1:
        if key_padding_mask is None and Lq == Lk:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)  # lets SDPA skip the upper half
        mask = torch.ones(Lq, Lk, dtype=torch.bool, device=q.device).tril(Lk - Lq)
    if key_padding_mask is not None:
        kpm = key_padding_mask[:, None, None, :]
        mask = kpm if mask is None else mask & kpm
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def layer_norm(x: torch.Tensor, ln: nn.LayerNorm, residual: torch.Tensor | None = None,
               backend: str = "torch") -> torch.Tensor:
    """``ln(x + residual)`` (post-LN's add-and-normalise; one fused kernel under triton). A pack's
    ``RunLayerNorm`` has (R, C) weights and normalises run r's rows of x (R, ..., C) with row r."""
    if backend == "triton":
        if residual is not None and residual.dtype != x.dtype:
            # bf16 autocast: a bf16 branch meets the fp32 residual stream. Add and normalise in fp32, as
            # torch does under autocast (x + residual promotes; layer_norm runs in fp32).
            dtype = torch.promote_types(x.dtype, residual.dtype)
            x, residual = x.to(dtype), residual.to(dtype)
        return _kernel("layer_norm")(x, ln.weight, ln.bias, ln.eps, residual=residual)
    if residual is not None:
        x = x + residual
    if ln.weight.dim() == 2:  # a pack's RunLayerNorm
        return run_layer_norm(x, ln.weight, ln.bias, ln.eps)
    return F.layer_norm(x, ln.normalized_shape, ln.weight, ln.bias, ln.eps)


def embeddings(x: torch.Tensor, word: nn.Embedding, pos: nn.Embedding, type_: nn.Embedding, ln: nn.LayerNorm,
               backend: str = "torch") -> torch.Tensor:
    """BERT's embedding block, ``ln(word[x] + type[0] + pos[:L])`` (gather, sum and LayerNorm in one
    kernel under triton, and its backward in one more). A pack's tables are (R, V, C) and ids (R, B, L)."""
    if backend == "triton":
        if deferred.active():  # the gradients written where the optimiser reads them, their sums deferred
            return deferred.embedding_layer_norm(x, word, pos, type_, ln)
        return _kernel("embedding_layer_norm")(x, word.weight, pos.weight, type_.weight, ln.weight, ln.bias, ln.eps,
                                               padding_idx=word.padding_idx)
    # the small tables summed first: one pass over the (B, L, C) rows each way, not two
    if word.weight.dim() == 3:
        return layer_norm(word(x) + (leading_rows(type_.weight, 1) + leading_rows(pos.weight, x.shape[-1])), ln,
                          backend=backend)
    return layer_norm(word(x) + (type_.weight[0] + pos.weight[:x.shape[1]]), ln, backend=backend)


def token_position_embedding(x: torch.Tensor, tok: nn.Module, pos: nn.Module, backend: str = "torch") -> torch.Tensor:
    """GPT's input ``tok[x] + pos[:L]``: one kernel each way under triton (``kernels.token_position_embedding``,
    a deterministic backward without the sort that ``embedding_dense_backward`` does past 3,072 ids), for
    tables of up to its ``MAX_V`` rows in all; PyTorch's gather and add otherwise. A pack's tables are
    (R, V, C) and (R, P, C), its ids (R, B, L)."""
    if backend == "triton":
        te = importlib.import_module("kernels.token_embedding")
        if tok.weight.shape[-2] + pos.weight.shape[-2] <= te.MAX_V and tok.weight.shape[-1] <= te.MAX_C:
            if deferred.active():  # the tables' gradients written where the optimiser reads them
                return deferred.token_position_embedding(x, tok.weight, pos.weight)
            return te.token_position_embedding(x, tok.weight, pos.weight)
    return tok(x) + leading_rows(pos.weight, x.shape[-1])


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor | None = None,
                  sums: torch.Tensor | None = None, backend: str = "torch", accumulate: bool = True,
                  counter: torch.Tensor | None = None) -> torch.Tensor:
    """Per run ``sum_b weight[b] * CE(logits[b], targets[b])`` (default: the batch mean), and with ``sums``
    (float64 (3,), or (R, 3) for a pack) += (``accumulate=False``: =) [CE sum, correct, rows] over the rows of
    nonzero weight: the step's loss and its metrics (``kernels.cross_entropy``, one launch under triton, given
    the caller's zeroed int32 ``counter`` of R elements -- else it costs a fill; PyTorch ops under torch -- the
    kernel's reference, and the path for more classes than it takes)."""
    ce = importlib.import_module("kernels.fused_cross_entropy")
    if backend == "triton" and logits.shape[-1] <= ce.MAX_V:
        return ce.cross_entropy(logits, targets, weight, sums, accumulate, counter)
    return ce.cross_entropy_reference(logits, targets, weight, sums, accumulate)
