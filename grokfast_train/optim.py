"""The optimiser of a run: AdamW with decoupled weight decay, optionally behind the Grokfast filter.

The torch backend uses ``torch.optim.AdamW`` (foreach) plus ``GrokfastEMA``; the triton backend
uses ``kernels.FusedAdamW``, which does both in one launch over a flat buffer.
"""

from __future__ import annotations

import torch

from .config import Config
from .grokfast import GrokfastEMA


def build_optimizer(cfg: Config, model: torch.nn.Module, backend: str):
    """Returns (optimizer, grad_filter); grad_filter is None when the optimiser filters itself."""
    params = [p for p in model.parameters() if p.requires_grad]
    if backend == "triton":
        from kernels import FusedAdamW

        opt = FusedAdamW(params, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay,
                         grokfast_alpha=cfg.grokfast_alpha, grokfast_lamb=cfg.grokfast_lamb)
        return opt, None
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay,
                            foreach=True)
    grad_filter = None
    if cfg.grokfast_alpha is not None:
        grad_filter = GrokfastEMA(params, alpha=cfg.grokfast_alpha, lamb=cfg.grokfast_lamb)
    return opt, grad_filter
