"""Grokfast's EMA gradient filter (Lee et al. 2024), for the PyTorch optimiser path.

Before each optimiser step:  h <- alpha*h + (1-alpha)*g ;  g <- g + lamb*h,
with h starting at the first gradient. The Triton path fuses the same filter into
``kernels.FusedAdamW``; this module is the plain-PyTorch equivalent used with torch.optim.AdamW.
"""

from __future__ import annotations

from typing import Iterable

import torch


class GrokfastEMA:
    def __init__(self, params: Iterable[torch.nn.Parameter], alpha: float = 0.98, lamb: float = 2.0):
        self.params = [p for p in params if p.requires_grad]
        self.alpha = alpha
        self.lamb = lamb
        self.h: list[torch.Tensor] | None = None

    @torch.no_grad()
    def apply_(self) -> None:
        """Filter the gradients in place; call between backward() and optimizer.step()."""
        grads = [p.grad for p in self.params]
        if self.h is None:
            self.h = [g.clone() for g in grads]
        else:
            torch._foreach_lerp_(self.h, grads, 1.0 - self.alpha)  # h + (1-a)(g-h) = a h + (1-a) g
        torch._foreach_add_(grads, self.h, alpha=self.lamb)

    def state_dict(self) -> dict:
        return {"alpha": self.alpha, "lamb": self.lamb, "h": self.h}

    def load_state_dict(self, state: dict) -> None:
        self.alpha, self.lamb = state["alpha"], state["lamb"]
        h = state["h"]
        self.h = None if h is None else [t.to(p.device) for t, p in zip(h, self.params)]
