"""The post-LN transformer layer shared by both models (BERT and GPT-1 use the same one).

    x = LN(x + Attn(x))
    x = LN(x + W2 · GELU(W1 · x))

``query_pos`` computes the layer's output at one position only: every position may still be
attended to, but the query, the attention output, both residuals, both LayerNorms and the FFN run
on one row. That is exact -- the other rows of the output are simply not computed -- and it is what
the last layer needs when the loss reads one position (DESIGN.md, "Compute only what the loss
reads"). Such a layer projects no key or value either: its one query attends to the input rows
themselves (``readout_attention.py``; IMDB's CPU step ~3x faster; on the triton backend one kernel each way).

``runs=R`` builds the packed layer (``runs.py``): R independent copies, activations (R, B, L, C).
The forward is written for any leading dimensions, so one body serves both.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import deferred, ops
from .deferred import Linear
from .embedding_sum import EmbeddingSum
from .readout_attention import fits as readout_fits
from .readout_attention import readout_attention
from .runs import RunLayerNorm, RunLinear


class Block(nn.Module):
    def __init__(self, hidden: int, heads: int, ffn: int, ln_eps: float, causal: bool, gelu: str,
                 backend: str = "torch", runs: int | None = None):
        super().__init__()
        if hidden % heads:
            raise ValueError(f"hidden {hidden} must be divisible by heads {heads}")
        self.heads, self.causal, self.gelu = heads, causal, gelu  # gelu: "none" (erf) | "tanh"
        self.backend = ops.check_backend(backend)
        if runs is None:
            linear, norm = Linear, lambda n: nn.LayerNorm(n, eps=ln_eps)
        else:
            linear, norm = (lambda i, o: RunLinear(runs, i, o)), (lambda n: RunLayerNorm(runs, n, ln_eps))
        # separate q/k/v projections: the readout-only path projects queries at one row only
        self.q = linear(hidden, hidden)
        self.k = linear(hidden, hidden)
        self.v = linear(hidden, hidden)
        self.o = linear(hidden, hidden)
        self.ln1 = norm(hidden)
        self.fc1 = linear(hidden, ffn)
        self.fc2 = linear(ffn, hidden)
        self.ln2 = norm(hidden)

    def forward(self, x: torch.Tensor | EmbeddingSum, mask: torch.Tensor | None = None,
                query_pos: int | None = None) -> torch.Tensor:
        """x (..., L, C) -- or, in a decoder's first layer, an ``EmbeddingSum`` of that shape, projected
        from its tables -- and mask bool (..., L) True at real tokens -> (..., L, C), or (..., 1, C) at
        ``query_pos``; the leading dimensions are (B,), or (R, B) for a pack."""
        lead, C = x.shape[:-2], x.shape[-1]
        xq = x
        if query_pos is not None:
            xq = _positions(x, query_pos, query_pos + 1)
            if self.causal:  # keys after the query are never seen; don't project them
                x = _positions(x, 0, query_pos + 1)
                mask = None if mask is None else mask[..., :query_pos + 1]
        if query_pos is not None and isinstance(x, torch.Tensor) and (self.backend == "torch"
                                                                    or readout_fits(C, self.heads, x.shape[-2])):
            # one query row: its attention from x itself, no key or value projected (readout_attention.py; on the
            # triton backend one kernel each way, for sequences long enough to pay: ``fits``). (Where x is an
            # EmbeddingSum the keys and values are projected from the tables, as cheaply.)
            a, xq = readout_attention(x, self.q.weight, self.q.bias, self.k.weight, self.k.bias, self.v.weight,
                                      self.v.bias, self.heads, mask, row=query_pos, backend=self.backend)
        else:
            a, xq = self._attention(x, xq, mask, query_pos)
            a = a.reshape(*lead, xq.shape[-2], C)
        if not deferred.active():
            h = ops.layer_norm(self.o(a), self.ln1, residual=xq, backend=self.backend)
            f = self.fc2(F.gelu(self.fc1(h), approximate=self.gelu))
            return ops.layer_norm(f, self.ln2, residual=h, backend=self.backend)
        h = self._linear_norm(a, self.o, self.ln1, xq)
        (g,), h_res = deferred.fan_out(h, [(self.fc1, None, _GELU_ACT[self.gelu])], None)
        return self._linear_norm(g, self.fc2, self.ln2, h_res)

    def _attention(self, x, xq, mask, query_pos) -> tuple[torch.Tensor, torch.Tensor]:
        """The attention of xq's rows over x's, heads merged, (N, Lq, C) with N the sequences (a pack's runs too);
        and the residual, xq as a dense tensor (under ``deferred``, the view whose gradient its products sum)."""
        C = x.shape[-1]

        def heads(t: torch.Tensor) -> torch.Tensor:  # (..., T, C) -> (N, H, T, C/H): a pack's runs join the batch
            return t.reshape(-1, t.shape[-2], self.heads, C // self.heads).transpose(1, 2)

        mask = None if mask is None else mask.reshape(-1, mask.shape[-1])
        if deferred.active() and isinstance(x, torch.Tensor):  # the gradients meeting at x summed as they are made
            (q, k, v), xq = deferred.fan_out(x, [(self.q, query_pos, None), (self.k, None, None),
                                                 (self.v, None, None)], query_pos)
        else:
            q, k, v = _project(self.q, xq), _project(self.k, x), _project(self.v, x)
            if isinstance(xq, EmbeddingSum):
                xq = xq.dense()  # the residual: at the query's row alone when there is a query_pos
        a = ops.attention(heads(q), heads(k), heads(v), mask, self.causal, self.backend)
        return a.transpose(1, 2), xq

    def _linear_norm(self, x: torch.Tensor, linear: nn.Module, norm: nn.Module, residual: torch.Tensor):
        """``norm(linear(x) + residual)``: one launch forward where the rows fit one tile (deferred.py)."""
        if deferred.fits_linear_norm(linear, norm):
            return deferred.linear_norm(x, linear, norm, residual)
        return ops.layer_norm(linear(x), norm, residual=residual, backend=self.backend)


_GELU_ACT = {"none": "gelu", "tanh": "gelu_tanh"}  # F.gelu's ``approximate`` -> kernels.matmul's ``act``


def _positions(x: torch.Tensor | EmbeddingSum, start: int, stop: int) -> torch.Tensor | EmbeddingSum:
    return x.positions(start, stop) if isinstance(x, EmbeddingSum) else x[..., start:stop, :]


def _project(linear: nn.Module, x: torch.Tensor | EmbeddingSum) -> torch.Tensor:
    return x.project(linear) if isinstance(x, EmbeddingSum) else linear(x)
