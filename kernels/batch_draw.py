"""A training step's batch drawn in one launch: ``draw_batch(perm, offset, n, batch, width, x, y, mask, base)``.

The trainer's sampler keeps each run's epoch order (``perm``) and the position of its next batch
(``offset``) on the device, so that a captured step draws a fresh batch at every replay. In PyTorch
ops the draw is seven launches of a few hundred elements each -- the lane offsets, their remainder,
the permutation gather, the offset's add and remainder, and the row gathers of tokens and labels
(and of the padding mask) -- each waiting for the one before. Here it is one launch:

- program (r, block) reads run r's offset, maps its lanes b to ``perm[r, (offset[r] + b) % n[r]] +
  base[r]`` and copies those rows of ``x`` (token ids), ``y`` (labels) and ``mask`` (if given) into
  the run's (width, ...) slice of the outputs;
- the offsets advance in place, ``offset[r] = (offset[r] + batch[r]) % n[r]``, by whichever program
  finishes last: every program takes a ticket from a counter (an acquire-release atomic, after its
  own read of the offsets), and the one holding the last ticket advances every run's offset and
  resets the counter to 0 for the next call. No program can read an offset after it moved.

Arguments: ``perm`` int64 (R, P), run r's order in ``perm[r, :n[r]]``; ``offset``, ``n``, ``batch``
int64 (R,) on the same device (``offset`` is advanced in place); ``width``, a host int, the lanes
drawn per run (lanes past a run's batch are drawn all the same, modulo n: a pack's padding, weighed 0
by its loss); ``x`` (N, L) and ``y`` (N,) int64 and ``mask`` (N, L) bool, the rows (contiguous; rows of
more than ``MAX_L`` tokens take the reference's PyTorch ops);
``base`` optional int64 (R,), run r's first row in them (a pack's concatenated training sets);
``counter`` int32 (1,), zero, owned by the caller and left zero (CUDA only; the reference ignores it).
Returns (x (R, width, L), y (R, width), mask (R, width, L) or None). Indices are not checked on the
device (a host check would sync): ``0 <= perm < N - base`` and ``n >= 1`` are the caller's to keep.

CUDA tensors run Triton; CPU tensors run ``draw_batch_reference`` (or Triton under ``TRITON_INTERPRET=1``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._compile import CompileSpec
from ._dispatch import use_triton
from ._pdl import enter, pdl

_TILE = 512  # elements of a row block a program copies (rows x padded row length)
MAX_L = 1024  # longest row the kernel takes (a program copies at least one whole row); longer: the reference
_BLOCK_R = 128  # offsets the last program advances at a time
_WARPS = 8  # spill-free for every tile on sm_80 and sm_90 under Triton 3.6 and 3.9 (4 warps spilled 8-16 B at some)


def _config(length: int) -> tuple[int, int]:
    """(BLOCK_L, BLOCK_B): whole rows padded to a power of two, as many as fill a tile."""
    block_l = triton.next_power_of_2(max(1, length))
    return block_l, max(1, _TILE // block_l)


def _empty(shape, dtype, device) -> torch.Tensor:
    """Every output buffer the kernel fills comes from here (tests poison it to catch unwritten memory)."""
    return torch.empty(shape, dtype=dtype, device=device)


@triton.jit
def _draw_kernel(PERM, OFFSET, N, BATCH, BASE, X, Y, M, OUT_X, OUT_Y, OUT_M, COUNTER,
                 R, width, L, perm_stride, blocks,
                 HAS_MASK: tl.constexpr, HAS_BASE: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_L: tl.constexpr,
                 BLOCK_R: tl.constexpr, PDL: tl.constexpr = False):
    enter(PDL)
    run = tl.program_id(1)
    lanes = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    ok = lanes < width
    n = tl.load(N + run)
    j = (tl.load(OFFSET + run) + lanes) % n
    rows = tl.load(PERM + run.to(tl.int64) * perm_stride + j, mask=ok, other=0)
    if HAS_BASE:
        rows += tl.load(BASE + run)
    out_rows = run.to(tl.int64) * width + lanes

    cols = tl.arange(0, BLOCK_L)
    tile_ok = ok[:, None] & (cols < L)[None, :]
    src = rows[:, None] * L + cols[None, :]
    dst = out_rows[:, None] * L + cols[None, :]
    tl.store(OUT_X + dst, tl.load(X + src, mask=tile_ok), mask=tile_ok)
    if HAS_MASK:
        tl.store(OUT_M + dst, tl.load(M + src, mask=tile_ok), mask=tile_ok)
    tl.store(OUT_Y + out_rows, tl.load(Y + rows, mask=ok), mask=ok)

    # The last program to finish advances every run's offset: its ticket, acquire-release, comes after
    # every other program's ticket, and each of those after that program's read of its offset. One thread
    # takes a program's ticket, so the barrier first: every warp of the program has read its offset.
    tl.debug_barrier()
    ticket = tl.atomic_add(COUNTER, 1, sem="acq_rel")
    if ticket == R * blocks - 1:
        for r0 in range(0, R, BLOCK_R):
            rs = r0 + tl.arange(0, BLOCK_R)
            live = rs < R
            o = tl.load(OFFSET + rs, mask=live, other=0)
            step = tl.load(BATCH + rs, mask=live, other=0)
            size = tl.load(N + rs, mask=live, other=1)
            tl.store(OFFSET + rs, (o + step) % size, mask=live)
        tl.store(COUNTER, 0)  # ready for the next call (the launch boundary orders it before any later read)


def draw_batch_reference(perm, offset, n, batch, width: int, x, y, mask=None, base=None, counter=None):
    """The executable spec, in PyTorch ops (the CPU path): gather, then advance ``offset`` in place."""
    lanes = torch.arange(width, device=perm.device)
    rows = perm.gather(1, (offset[:, None] + lanes) % n[:, None])
    if base is not None:
        rows = rows + base[:, None]
    offset.add_(batch).remainder_(n)
    return x[rows], y[rows], None if mask is None else mask[rows]


def _check(perm, offset, n, batch, width, x, y, mask, base, counter) -> None:
    if perm.dim() != 2 or perm.dtype != torch.int64:
        raise ValueError(f"draw_batch: perm must be int64 (R, P); got {perm.dtype} {tuple(perm.shape)}")
    runs = perm.shape[0]
    for name, t in (("offset", offset), ("n", n), ("batch", batch), ("base", base)):
        if t is not None and (t.dtype != torch.int64 or tuple(t.shape) != (runs,) or not t.is_contiguous()):
            raise ValueError(f"draw_batch: {name} must be a contiguous int64 ({runs},); got {t.dtype} {tuple(t.shape)}")
    if x.dim() != 2 or x.dtype != torch.int64 or y.dtype != torch.int64 or tuple(y.shape) != x.shape[:1]:
        raise ValueError(f"draw_batch: x must be int64 (N, L) and y int64 (N,); got {x.dtype} {tuple(x.shape)}, "
                         f"{y.dtype} {tuple(y.shape)}")
    if x.shape[1] < 1 or perm.stride(1) != 1:
        raise ValueError("draw_batch: rows of at least one token, and perm's rows contiguous")
    if mask is not None and (mask.dtype != torch.bool or mask.shape != x.shape):
        raise ValueError(f"draw_batch: mask must be bool {tuple(x.shape)}; got {mask.dtype} {tuple(mask.shape)}")
    if width < 0:
        raise ValueError(f"draw_batch: width must be >= 0; got {width}")


def draw_batch(perm: torch.Tensor, offset: torch.Tensor, n: torch.Tensor, batch: torch.Tensor, width: int,
               x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None, base: torch.Tensor | None = None,
               counter: torch.Tensor | None = None):
    """Each run's next ``width`` rows of (x, y, mask), as (R, width, ...) tensors; ``offset`` advanced in place.
    See the module docstring."""
    _check(perm, offset, n, batch, width, x, y, mask, base, counter)
    if not use_triton(perm, offset, n, batch, x, y, mask, base) or x.shape[1] > MAX_L:  # (longer rows: torch's ops)
        return draw_batch_reference(perm, offset, n, batch, width, x, y, mask, base)
    if counter is None or counter.dtype != torch.int32 or counter.numel() != 1 or counter.device != perm.device:
        raise ValueError("draw_batch: the Triton path needs counter, a zeroed int32 (1,) tensor on the device")
    runs, length = perm.shape[0], x.shape[1]
    block_l, block_b = _config(length)
    x, y = x.contiguous(), y.contiguous()
    out_x = _empty((runs, width, length), torch.int64, x.device)
    out_y = _empty((runs, width), torch.int64, x.device)
    out_m = None if mask is None else _empty((runs, width, length), torch.bool, x.device)
    blocks = triton.cdiv(width, block_b)
    if runs and blocks:
        m = None if mask is None else mask.contiguous().view(torch.uint8)
        _draw_kernel[(blocks, runs)](
            perm, offset, n, batch, offset if base is None else base, x, y, x if m is None else m,
            out_x, out_y, out_x if out_m is None else out_m.view(torch.uint8), counter,
            runs, width, length, perm.stride(0), blocks,
            HAS_MASK=mask is not None, HAS_BASE=base is not None, BLOCK_B=block_b, BLOCK_L=block_l,
            BLOCK_R=_BLOCK_R, num_warps=_WARPS, **pdl(perm))
    else:  # nothing drawn; the offsets still advance, as the reference's do
        offset.add_(batch).remainder_(n)
    return out_x, out_y, out_m



def compile_specs() -> list[CompileSpec]:
    """Every configuration ``draw_batch`` can launch: each row-length block x mask or not x base or not."""
    specs = []
    for block_l in (2 ** k for k in range(11)):  # 1 ... 1024 = MAX_L
        _, block_b = _config(block_l)
        for has_mask in (False, True):
            for has_base in (False, True):
                specs.append(CompileSpec(
                    name=f"draw_batch[BLOCK_B={block_b},BLOCK_L={block_l}{',mask' if has_mask else ''}"
                         f"{',base' if has_base else ''}]", fn=_draw_kernel,
                    signature=dict(PERM="*i64", OFFSET="*i64", N="*i64", BATCH="*i64", BASE="*i64", X="*i64",
                                   Y="*i64", M="*u8" if has_mask else "*i64", OUT_X="*i64", OUT_Y="*i64",
                                   OUT_M="*u8" if has_mask else "*i64", COUNTER="*i32", R="i32", width="i32",
                                   L="i32", perm_stride="i32", blocks="i32", HAS_MASK="constexpr",
                                   HAS_BASE="constexpr", BLOCK_B="constexpr", BLOCK_L="constexpr",
                                   BLOCK_R="constexpr"),
                    constexprs=dict(HAS_MASK=has_mask, HAS_BASE=has_base, BLOCK_B=block_b, BLOCK_L=block_l,
                                    BLOCK_R=_BLOCK_R), num_warps=_WARPS))
    return specs
