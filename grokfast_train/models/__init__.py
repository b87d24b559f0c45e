"""The paper's two models, behind one call: ``model(x, mask) -> logits (B, num_classes)``.

``x`` (B, L) token ids, ``mask`` bool (B, L) True at real tokens or None; the logits are read
at the task's readout position, so the training loop needs to know nothing about the model.
Weights keep PyTorch's defaults here: the trainer initialises them with
``kernels.scaled_init_(model, std, alpha, seed)``.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import UsageError
from .decoder import Decoder
from .encoder import EncoderClassifier

__all__ = ["Decoder", "EncoderClassifier", "build_model", "resolve_backend"]


def resolve_backend(cfg) -> str:
    """``auto``: the Triton kernels when the run is on CUDA and the attention kernel takes the
    head size (hidden / heads from 1 to 128), PyTorch's ops otherwise -- the same function
    either way. An explicit ``triton`` with a head size the kernel lacks is a UsageError."""
    from kernels.fused_attention import MAX_HEAD_DIM

    head_ok = 1 <= cfg.hidden // cfg.heads <= MAX_HEAD_DIM
    if cfg.backend == "triton" and not head_ok:
        raise UsageError(f"--backend triton: the attention kernel takes head sizes (hidden / heads) "
                         f"1 to {MAX_HEAD_DIM}, not {cfg.hidden // cfg.heads}; use --backend torch or auto")
    if cfg.backend != "auto":
        return cfg.backend
    on_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    return "triton" if on_cuda and head_ok else "torch"


def build_model(cfg, task, runs: int | None = None) -> nn.Module:
    """A resolved ``grokfast_train.config.Config`` and a ``TaskData`` -> the dataset's model; ``runs=R``:
    the packed model of R such runs (``runs.py``), every parameter (R, ...), weights left to the pack."""
    backend = resolve_backend(cfg)
    size = dict(hidden=cfg.hidden, n_layers=cfg.n_layers, heads=cfg.heads, ffn=cfg.ffn, backend=backend, runs=runs)
    if cfg.dataset == "modular":
        if task.num_classes != task.vocab_size:
            raise ValueError(f"the decoder's LM head predicts tokens: num_classes {task.num_classes} "
                             f"must equal vocab_size {task.vocab_size}")
        return Decoder(task.vocab_size, max_len=task.seq_len, readout_pos=task.readout_pos, **size)
    if task.readout_pos != 0:
        raise ValueError(f"the encoder classifier reads position 0 (its pooler), not {task.readout_pos}")
    if task.seq_len > cfg.max_len:
        raise ValueError(f"sequences of length {task.seq_len} exceed --max-len {cfg.max_len}")
    pad_id = 0 if task.pad_id is None else task.pad_id
    return EncoderClassifier(task.vocab_size, max_len=cfg.max_len, num_classes=task.num_classes, pad_id=pad_id,
                             **size)
