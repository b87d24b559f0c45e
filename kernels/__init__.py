"""Fused Triton kernels for small-transformer training, each with its pure-PyTorch reference.

Imports only torch and triton. CUDA tensors run Triton; CPU tensors run the reference (or the
Triton kernel itself under ``TRITON_INTERPRET=1``). See kernels/README.md.
"""

from .init import rescale_, scaled_init_

__all__ = ["scaled_init_", "rescale_"]
