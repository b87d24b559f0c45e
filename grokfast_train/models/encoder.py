"""BERT-style encoder classifier: the paper's IMDB / Yelp model.

Word + position + token-type embeddings (every token is type 0), LayerNorm, post-LN layers
(bidirectional attention, exact erf GELU), a tanh pooler on the first token, a linear head.
No dropout (the paper runs with 0). With identical weights it computes what transformers'
``BertForSequenceClassification`` computes (tests/trainer/test_models.py).

``runs=R``: the packed encoder (``runs.py``): ids and mask (R, B, L) -> logits (R, B, classes).
"""

from __future__ import annotations

import torch
from torch import nn

from . import deferred, ops
from .block import Block
from .deferred import Linear
from .rows import Embedding
from .runs import RunEmbedding, RunLayerNorm, RunLinear


class EncoderClassifier(nn.Module):
    def __init__(self, vocab_size: int, hidden: int = 128, n_layers: int = 1, heads: int = 4, ffn: int = 512,
                 max_len: int = 256, num_classes: int = 2, type_vocab_size: int = 2, pad_id: int = 0,
                 ln_eps: float = 1e-12, readout_only: bool = True, backend: str = "torch", runs: int | None = None):
        super().__init__()
        self.runs = runs
        self.max_len = max_len
        # readout_only: the last layer runs only at position 0, the one the pooler reads
        self.readout_only = readout_only
        self.backend = ops.check_backend(backend)
        if runs is None:
            embedding, linear, norm = Embedding, Linear, lambda n: nn.LayerNorm(n, eps=ln_eps)
        else:
            embedding = lambda n, c, padding_idx=None: RunEmbedding(runs, n, c, padding_idx)  # noqa: E731
            linear, norm = (lambda i, o: RunLinear(runs, i, o)), (lambda n: RunLayerNorm(runs, n, ln_eps))
        self.tok_emb = embedding(vocab_size, hidden, padding_idx=pad_id)  # BERT: pad row 0, gets no gradient
        self.pos_emb = embedding(max_len, hidden)
        self.type_emb = embedding(type_vocab_size, hidden)  # kept for BERT parity; only type 0 is used
        self.emb_ln = norm(hidden)
        self.layers = nn.ModuleList(
            Block(hidden, heads, ffn, ln_eps, causal=False, gelu="none", backend=backend, runs=runs)
            for _ in range(n_layers))
        self.pooler = linear(hidden, hidden)
        self.head = linear(hidden, num_classes)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, L) token ids, mask bool (B, L) True at real tokens (None: no padding) -> logits (B, num_classes);
        a pack takes (R, B, L) and returns (R, B, num_classes)."""
        L = x.shape[-1]
        if L > self.max_len:
            raise ValueError(f"sequence length {L} exceeds max_len {self.max_len}")
        h = ops.embeddings(x, self.tok_emb, self.pos_emb, self.type_emb, self.emb_ln, backend=self.backend)
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            h = layer(h, mask, query_pos=0 if self.readout_only and i == last else None)
        first = h.squeeze(-2) if h.shape[-2] == 1 else h[..., 0, :]  # readout-only: a view both ways
        if deferred.active():  # the pooler's tanh in its product's launch, each way
            return self.head(deferred.linear(first, self.pooler.weight, self.pooler.bias, act="tanh"))
        return self.head(torch.tanh(self.pooler(first)))
