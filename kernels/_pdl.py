"""Programmatic dependent launch (Hopper and later): the next kernel starts while this one finishes.

Inside a CUDA graph a tiny kernel still waits for the one before it to drain and for its own launch and
setup: microseconds each, which a step of ~20 small kernels pays ~20 times. Launched with PDL
(``launch_pdl=True``: the driver's programmatic stream serialisation), a kernel may be scheduled as soon
as every program of the kernel before it has signalled ``griddepcontrol.launch_dependents``; it then
waits in ``griddepcontrol.wait`` until that kernel has finished and its writes are visible. So each
kernel here, when its ``PDL`` constexpr is set, first waits and then signals (``enter``): nothing it
reads or writes can race with the kernel before it, and the kernel after it may get ready meanwhile.
The wait must come before any memory access; ``kernels._compile`` checks that in every PDL build's PTX.

Off by default: ``GROKFAST_PDL=1`` in the environment (read at import) or ``set_pdl(True)`` turns it on,
for CUDA tensors on a device of compute capability 9.0 or more (the instructions need sm_90).
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

_ON = os.environ.get("GROKFAST_PDL", "0") == "1"
_KEYWORDS = {"PDL": True, "launch_pdl": True}
_NONE: dict = {}


def set_pdl(on: bool) -> bool:
    """Turn programmatic dependent launch on or off for later launches; returns the previous setting."""
    global _ON
    previous, _ON = _ON, bool(on)
    return previous


def pdl_enabled() -> bool:
    return _ON


@functools.lru_cache(maxsize=None)
def _sm90(index: int) -> bool:
    return torch.cuda.get_device_capability(index)[0] >= 9


def pdl(t: torch.Tensor) -> dict:
    """The launch keywords for a kernel whose operands live where ``t`` does: ``PDL`` (the constexpr that
    makes the kernel wait, see ``enter``) and ``launch_pdl`` (the launch attribute), or none."""
    if not _ON or t.device.type != "cuda" or not _sm90(t.device.index if t.device.index is not None
                                                             else torch.cuda.current_device()):
        return _NONE
    return _KEYWORDS


@triton.jit
def enter(PDL: tl.constexpr):
    """A kernel's first statement: under PDL, wait for the kernel before to finish, then let the next one be
    scheduled. Without PDL, nothing."""
    if PDL:
        gdc_wait()
        gdc_launch_dependents()
