"""Rows split among programs, and the scratch their partial sums meet in: for kernels whose programs each own
one output tile and walk a long run of rows into it (a weight gradient's dyᵀ x, an embedding's one-hot
backward). One program walking every row was measured on an H200 (2026-11-28) at ~1 µs per step of its walk:
119 µs of a 431 µs modular step for the weight gradients, whose k and v walk 3,072 rows (17,238 at the paper's
full batch). Split, each of a tile's programs walks a chunk and stores its partial sums; it then takes a ticket
from the tile's counter, and the program with the last ticket adds the partials up in split order and writes
the tile -- one launch, every element written once, the same bits whichever program finishes last (as
``kernels.cross_entropy`` reduces its partials).
"""

from __future__ import annotations

import torch
import triton

# A rule, not a measurement: a program walks at least ROWS_PER_SPLIT rows (~8 steps of 32), and one problem
# takes at most MAX_PROGRAMS programs (its partials then at most MAX_PROGRAMS tiles of scratch); a wide pack's
# runs give a problem programs enough unsplit.
ROWS_PER_SPLIT = 256
MAX_PROGRAMS = 2048


def split_rows(m: int, tiles: int, block: int) -> tuple[int, int]:
    """(programs per tile, rows per program, a multiple of ``block``) for m rows and ``tiles`` output tiles."""
    splits = max(1, min(triton.cdiv(m, ROWS_PER_SPLIT), MAX_PROGRAMS // max(tiles, 1)))
    chunk = triton.cdiv(triton.cdiv(max(m, 1), splits), block) * block
    return triton.cdiv(max(m, 1), chunk), chunk


# Scratch for partials (float32) and ticket counters (int32), one of each per device and dtype, grown as a
# launch needs and never freed: a captured graph replays with the very tensor it was captured with. The
# counters are zeros, and every launch leaves them so. One stream at a time: two launches in flight at once
# would share them.
_BUFFERS: dict[tuple, list[torch.Tensor]] = {}
_CAPTURED: list[torch.Tensor] = []


def scratch(device: torch.device, dtype: torch.dtype, n: int) -> torch.Tensor:
    """At least n zeros' worth of ``dtype`` on ``device`` (the counters must stay zero between launches)."""
    held = _BUFFERS.setdefault((device, dtype), [])
    if held and held[-1].numel() >= max(n, 1):
        return held[-1]
    if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        # made inside a capture, it is zeroed only when the graph replays: the graph's alone, never shared
        _CAPTURED.append(torch.zeros(max(n, 1), dtype=dtype, device=device))
        return _CAPTURED[-1]
    held.append(torch.zeros(max(n, 1, 2 * (held[-1].numel() if held else 0)), dtype=dtype, device=device))
    return held[-1]
