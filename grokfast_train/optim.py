"""The optimiser of a run: AdamW with decoupled weight decay, optionally behind the Grokfast filter.

The torch backend uses ``torch.optim.AdamW`` plus ``GrokfastEMA``; the triton backend uses
``kernels.FusedAdamW``, which does both in one launch over a flat buffer.

torch's AdamW runs ``fused``: one pass over each parameter's state where ``foreach`` makes a pass per
operation. On the CPU that took the paper's IMDB step from ~37 to ~26 ms (one thread, BENCHMARKS.md);
its arithmetic differs from foreach's by rounding only. A checkpoint keeps its optimiser's flags, so a
solo run written with foreach resumes with foreach, on its own trajectory (a pack always steps fused).
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
                            fused=True)
    grad_filter = None
    if cfg.grokfast_alpha is not None:
        grad_filter = GrokfastEMA(params, alpha=cfg.grokfast_alpha, lamb=cfg.grokfast_lamb)
    return opt, grad_filter
