"""The decoder's first-layer input kept as what it is: a sum of embedding rows, ``tok[ids] + pos[:L]``.

A linear map of such a sum is the sum of the map applied to each table, gathered:

    W (tok[ids] + pos) + b  =  (W tokᵀ + b)[ids] + W pos

so the first layer's query, key and value projections multiply the tables' V + L rows instead of
the batch's B·L positions, then gather from the V·L (token, position) pairs. The same function; in
floating point it rounds differently (the sum comes after the projection, and under bf16 autocast
each part is rounded to bf16 before it: measured no less accurate against fp64). A large cut
where the vocabulary is small: the paper's modular task has V = 117, L = 6 and B = 512
(minibatch) to 9,576 (full batch), so the projections see 123 rows instead of 3,072-57,456. Its
gradients are autograd's: the gather's backward adds each position's gradient into its pair's
row, and the tables' projections carry them on to W, b, tok and pos.

``Decoder`` uses it where it pays (``worth_it``); the encoder cannot: BERT normalises the embeddings
(a LayerNorm is not linear) before its first layer. A pack's tables are (R, V, C) and (R, 1, L, C),
its ids (R, B, L); every op here takes run r's rows to run r's weights.
"""

from __future__ import annotations

import torch

from .rows import gather
from .runs import gather_rows, tied_head


class EmbeddingSum:
    """``tok[ids] + pos``, unevaluated: ids (..., L), tok (V, C) or (R, V, C), pos (L, C) or (R, 1, L, C)."""

    def __init__(self, ids: torch.Tensor, tok: torch.Tensor, pos: torch.Tensor):
        self.ids, self.tok, self.pos = ids, tok, pos

    @staticmethod
    def worth_it(ids: torch.Tensor, tok: torch.Tensor) -> bool:
        """On the CPU, where a step's time is its arithmetic: are there fewer (token, position) pairs
        than one run's batch has positions? (A GPU's modular step is bound by launches, not FLOPs, and
        this path launches more kernels; it stays off there until a GPU has measured it.)"""
        return ids.device.type == "cpu" and ids.dim() >= 2 and tok.shape[-2] < ids.shape[-2]

    @property
    def shape(self) -> torch.Size:
        return torch.Size((*self.ids.shape, self.tok.shape[-1]))

    def positions(self, start: int, stop: int) -> "EmbeddingSum":
        """Positions ``start:stop`` of every sequence (``x[..., start:stop, :]`` of the dense sum)."""
        return EmbeddingSum(self.ids[..., start:stop], self.tok, self.pos[..., start:stop, :])

    def dense(self) -> torch.Tensor:
        """The sum itself, (..., L, C)."""
        return _gather(self.tok, self.ids) + self.pos

    def project(self, linear: torch.nn.Module) -> torch.Tensor:
        """``linear(self.dense())`` from the tables: one (V·L, out) table of every (token, position) pair's
        projection -- the bias rides on the token part, added once -- and one gather from it."""
        L = self.ids.shape[-1]
        pairs = linear(self.tok).unsqueeze(-2) + tied_head(self.pos, linear.weight)  # (V, L, out) / (R, V, L, out)
        pair_ids = self.ids * L + torch.arange(L, device=self.ids.device)
        return _gather(pairs.flatten(-3, -2), pair_ids)


def _gather(table: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    return gather(table, ids) if table.dim() == 2 else gather_rows(table, ids)

