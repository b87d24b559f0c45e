"""Which implementation runs: explicit, per call, decided by the inputs.

CUDA tensors run the Triton kernel. CPU tensors run the pure-PyTorch reference, or the
Triton kernel itself when Triton's interpreter is on (``TRITON_INTERPRET=1``, set before
``kernels`` is imported) -- that is how the test suite checks kernels on a CPU-only machine.
"""

from __future__ import annotations

import os

import torch

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


def use_triton(*tensors: torch.Tensor) -> bool:
    """True when these tensors should go through the Triton kernel rather than the reference."""
    devices = {t.device.type for t in tensors if t is not None}
    if devices == {"cuda"}:
        return True
    if devices == {"cpu"}:
        return INTERPRET
    if len(devices) > 1:
        raise ValueError(f"tensors are on different devices {sorted(devices)}; put them on one device")
    raise ValueError(f"unsupported device {devices}; supported: cuda (Triton) and cpu (reference)")


def check_dtype(name: str, t: torch.Tensor, supported: tuple[torch.dtype, ...]) -> None:
    if t.dtype not in supported:
        names = ", ".join(str(d).removeprefix("torch.") for d in supported)
        raise ValueError(f"{name} has dtype {str(t.dtype).removeprefix('torch.')}; supported: {names}")


def dot_precision(dtype: torch.dtype) -> str:
    """tl.dot input precision for fp32 operands, following PyTorch's fp32-matmul switch."""
    if dtype != torch.float32:
        return "tf32"  # ignored for 16-bit operands
    matmul = torch.backends.cuda.matmul
    try:
        tf32 = matmul.allow_tf32
    except RuntimeError:  # torch >= 2.9 refuses the legacy read after the new API was used
        tf32 = getattr(matmul, "fp32_precision", "ieee") == "tf32"
    return "tf32" if tf32 else "tf32x3"
