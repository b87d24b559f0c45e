"""The compute dtype of a run: ``fp32`` (the paper's) or ``bf16`` under autocast.

bf16 is mixed precision, not a bf16 model: weights, gradients and optimiser state stay fp32 (master
weights), matrix products and attention run in bf16, LayerNorms and the loss in fp32 (autocast's
rules, and the same promotion on the Triton path: ``models.ops.layer_norm``), and every metric is
summed in fp32/fp64. Only the forward is wrapped; autograd runs each backward op in its forward's dtype.
"""

from __future__ import annotations

import contextlib

import torch


def autocast(device: torch.device, dtype: str):
    """A context for the forward pass of a run whose compute dtype is ``dtype`` ("fp32" | "bf16")."""
    if dtype == "fp32":
        return contextlib.nullcontext()
    if dtype != "bf16":
        raise ValueError(f"unknown compute dtype {dtype!r}; choose fp32 or bf16")
    # cache_enabled=False: autocast's cache of bf16 weight copies would be allocated inside a captured
    # CUDA graph and outlive it; recasting the weights each forward costs a few hundred kB for these models.
    return torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=False)
