"""BERT-style initialisation followed by a global rescale of every parameter by alpha.

``scaled_init_(module, std, alpha, seed)``: Linear and Embedding weights ~ normal(0, std),
biases 0, an Embedding's padding row 0, LayerNorm weight 1 and bias 0, then every parameter
multiplied by alpha (the grokking configuration of the critical-data-size paper uses alpha=10).
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn


def _unique_params(params: Iterable[torch.Tensor]) -> list[torch.Tensor]:
    seen: set[int] = set()
    out = []
    for p in params:
        if id(p) not in seen:  # tied weights appear once
            seen.add(id(p))
            out.append(p)
    return out


@torch.no_grad()
def rescale_reference_(params: Iterable[torch.Tensor], alpha: float) -> None:
    for p in _unique_params(params):
        p.mul_(alpha)


@torch.no_grad()
def scaled_init_reference_(module: nn.Module, std: float = 0.02, alpha: float = 1.0, seed: int = 0) -> None:
    """The executable spec: a CPU generator seeded with ``seed`` draws each weight in module order."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    done: set[int] = set()

    def normal_(w: torch.Tensor) -> None:
        if id(w) in done:
            return
        done.add(id(w))
        w.copy_(torch.randn(w.shape, generator=gen, dtype=torch.float32).mul_(std).to(w))

    for m in module.modules():
        if isinstance(m, nn.Linear):
            normal_(m.weight)
            if m.bias is not None:
                m.bias.zero_()
        elif isinstance(m, nn.Embedding):
            normal_(m.weight)
            if m.padding_idx is not None:
                m.weight[m.padding_idx].zero_()
        elif isinstance(m, nn.LayerNorm):
            if m.weight is not None:
                m.weight.fill_(1.0)
            if m.bias is not None:
                m.bias.zero_()
    rescale_reference_(module.parameters(), alpha)


def scaled_init_(module: nn.Module, std: float = 0.02, alpha: float = 1.0, seed: int = 0) -> None:
    scaled_init_reference_(module, std, alpha, seed)


def rescale_(params: Iterable[torch.Tensor], alpha: float) -> None:
    rescale_reference_(params, alpha)
