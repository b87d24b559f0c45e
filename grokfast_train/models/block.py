"""The post-LN transformer layer shared by both models (BERT and GPT-1 use the same one).

    x = LN(x + Attn(x))
    x = LN(x + W2 · GELU(W1 · x))

``query_pos`` computes the layer's output at one position only: keys and values still come
from every position (every position may be attended to), but the query, the attention output,
both residuals, both LayerNorms and the FFN run on one row. That is exact -- the other rows of
the output are simply not computed -- and it is what the last layer needs when the loss reads
one position (DESIGN.md, "Compute only what the loss reads").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import ops


class Block(nn.Module):
    def __init__(self, hidden: int, heads: int, ffn: int, ln_eps: float, causal: bool, gelu: str,
                 backend: str = "torch"):
        super().__init__()
        if hidden % heads:
            raise ValueError(f"hidden {hidden} must be divisible by heads {heads}")
        self.heads, self.causal, self.gelu = heads, causal, gelu  # gelu: "none" (erf) | "tanh"
        self.backend = ops.check_backend(backend)
        # separate q/k/v projections: the readout-only path projects queries at one row only
        self.q = nn.Linear(hidden, hidden)
        self.k = nn.Linear(hidden, hidden)
        self.v = nn.Linear(hidden, hidden)
        self.o = nn.Linear(hidden, hidden)
        self.ln1 = nn.LayerNorm(hidden, eps=ln_eps)
        self.fc1 = nn.Linear(hidden, ffn)
        self.fc2 = nn.Linear(ffn, hidden)
        self.ln2 = nn.LayerNorm(hidden, eps=ln_eps)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, query_pos: int | None = None) -> torch.Tensor:
        """x (B, L, C), mask bool (B, L) True at real tokens -> (B, L, C), or (B, 1, C) at ``query_pos``."""
        B, _, C = x.shape
        xq = x
        if query_pos is not None:
            xq = x[:, query_pos:query_pos + 1]
            if self.causal:  # keys after the query are never seen; don't project them
                x = x[:, :query_pos + 1]
                mask = None if mask is None else mask[:, :query_pos + 1]

        def heads(t: torch.Tensor) -> torch.Tensor:  # (B, T, C) -> (B, H, T, C/H)
            return t.view(B, t.shape[1], self.heads, C // self.heads).transpose(1, 2)

        a = ops.attention(heads(self.q(xq)), heads(self.k(x)), heads(self.v(x)), mask, self.causal, self.backend)
        a = self.o(a.transpose(1, 2).reshape(B, xq.shape[1], C))
        h = ops.layer_norm(a, self.ln1, residual=xq, backend=self.backend)
        f = self.fc2(F.gelu(self.fc1(h), approximate=self.gelu))
        return ops.layer_norm(f, self.ln2, residual=h, backend=self.backend)
