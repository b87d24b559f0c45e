"""GPT-1-style decoder: the paper's modular-arithmetic model.

Token + position embeddings (no LayerNorm after them), post-LN causal layers with GPT's tanh
GELU, an LM head tied to the token embedding, no bias, no final LayerNorm. With identical
weights it computes what transformers' ``OpenAIGPTLMHeadModel`` computes
(tests/trainer/test_models.py).

The loss reads one position (the one that predicts the answer), so ``forward`` returns the
logits there only. Causality makes that cheap: nothing after ``readout_pos`` can reach it, so
those positions are dropped before the first layer, and the last layer runs its query, FFN
and LayerNorms at ``readout_pos`` alone. On the CPU the first layer's projections are computed
from the embedding tables (``embedding_sum.py``) when the batch has more sequences than the
vocabulary has tokens (the modular task: 117 tokens, batches of 512 and up).

``runs=R``: the packed decoder (``runs.py``): ids (R, B, L) -> logits (R, B, vocab).
"""

from __future__ import annotations

import torch
from torch import nn

from . import ops
from .block import Block
from .embedding_sum import EmbeddingSum
from .rows import Embedding
from .runs import RunEmbedding, leading_rows, tied_head


class Decoder(nn.Module):
    def __init__(self, vocab_size: int, hidden: int = 128, n_layers: int = 1, heads: int = 4, ffn: int | None = None,
                 max_len: int = 512, ln_eps: float = 1e-5, readout_pos: int = -1, readout_only: bool = True,
                 backend: str = "torch", runs: int | None = None):
        super().__init__()
        self.runs = runs
        self.max_len = max_len
        self.readout_pos = readout_pos  # default for forward(); negative counts from the end
        self.readout_only = readout_only  # False: run everything everywhere, then pick readout_pos
        self.backend = ops.check_backend(backend)
        embedding = Embedding if runs is None else lambda n, c: RunEmbedding(runs, n, c)
        self.tok_emb = embedding(vocab_size, hidden)
        self.pos_emb = embedding(max_len, hidden)
        self.layers = nn.ModuleList(
            Block(hidden, heads, ffn or 4 * hidden, ln_eps, causal=True, gelu="tanh", backend=backend, runs=runs)
            for _ in range(n_layers))
        # LM head: F.linear with tok_emb.weight (tied), so there is one parameter, initialised once

    def _trunk(self, x: torch.Tensor, mask: torch.Tensor | None, query_pos: int | None) -> torch.Tensor:
        L = x.shape[-1]
        if L > self.max_len:
            raise ValueError(f"sequence length {L} exceeds max_len {self.max_len}")
        if query_pos is not None and EmbeddingSum.worth_it(x, self.tok_emb.weight):
            # the first layer projects the tables, not B·L rows
            h = EmbeddingSum(x, self.tok_emb.weight, leading_rows(self.pos_emb.weight, L))
        else:  # (forward_all, query_pos None, stays the plain computation the tests compare against)
            h = ops.token_position_embedding(x, self.tok_emb, self.pos_emb, self.backend)
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            h = layer(h, mask, query_pos=query_pos if i == last else None)
        return h

    def forward_all(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, L) token ids -> next-token logits at every position (B, L, vocab)."""
        return tied_head(self._trunk(x, mask, None), self.tok_emb.weight)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, readout_pos: int | None = None) -> torch.Tensor:
        """x (B, L) token ids -> logits (B, vocab) at ``readout_pos`` (default: the constructor's).

        ``mask`` (bool (B, L), True at real tokens) is honoured as a key padding mask, as
        transformers' ``attention_mask`` is; the task's sequences have no padding and pass None.
        """
        r = (self.readout_pos if readout_pos is None else readout_pos) % x.shape[-1]
        if not self.readout_only:
            return self.forward_all(x, mask)[..., r, :]
        x, mask = x[..., :r + 1], None if mask is None else mask[..., :r + 1]
        # (..., 1, C) -> (..., C): a squeeze is a view both ways, where [..., 0, :]'s backward writes zeros
        return tied_head(self._trunk(x, mask, r).squeeze(-2), self.tok_emb.weight)
