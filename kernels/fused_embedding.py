"""BERT's embedding block in one kernel each way: ``LayerNorm(word[ids] + type[type_ids] + pos[arange(L)])``.

``embedding_layer_norm(ids, word_weight, pos_weight, type_weight, ln_weight, ln_bias, eps=1e-12,
type_ids=None, padding_idx=None)`` -> (B, L, H). ``type_ids=None`` means every token is type 0 (what
the encoder does); ``padding_idx`` is F.embedding's: that word row is read as it is but gets no gradient.

Packed runs (``word_weight`` 3-D): R independent models trained as one stacked model (one launch instead
of R). ids (and type_ids) (R, B, L); word (R, V, H), pos (R, P, H), type (R, T, H), LayerNorm weight and
bias (R, H) -> (R, B, L, H). Run r's tokens read only run r's tables, and every gradient has its input's
shape with run r's sums in slot r (``padding_idx`` rows get none in any run). The optimiser keeps the
runs run-major in one flat buffer, so each table is a view whose run axis has any stride (each run's
slice contiguous): the kernels read it in place at ``table + r * stride(0)``, no copy (a 30,522 x 128
word table is 15.6 MB per run). A constexpr ``PACKED`` selects it, so the solo kernels compile to the
same code as before.

Why it is fused -- bytes at the paper's IMDB shape (B 128 x L 256 = 32,768 tokens, H 128 fp32: one
row is 512 B, one (tokens, H) activation 16.8 MB). The position table (L x H = 128 KB) and the type
rows stay in L2, so only the word rows count as gathered from memory.
- forward, unfused (eager: ``tok_emb(x) + type[0] + pos[:L]``, then LayerNorm): gather word rows and
  write them (2 x 512 B per token), add type (read + write), add pos (read + write), LayerNorm (read +
  write): 8 row accesses = 4 KB per token, 134 MB per step, 4 launches (at best, one gather-and-sum
  kernel and then the norm: 3 + 1 + 1 + 1 = 6 row accesses if every gathered row counted, ~ 100 MB).
  Fused: read the word row, write the output row, plus 8 B of id and 8 B of mean/rstd: 1,040 B per
  token, 34 MB per step, 1 launch.
- backward, unfused: LayerNorm backward reads dy and the saved sum and writes dz (3 rows), then
  autograd reads dz once per table: the position gradient (sum over B), the type gradient (sum over
  all tokens) and the word scatter (embedding_dense_backward: sort the ids, read dz, add rows into
  the dense gradient): 6 row accesses = 3 KB per token, ~ 101 MB per step, 6+ launches.
  Fused: read dy and the word row again (the sum is recomputed, not stored: 2 rows), id and
  mean/rstd (16 B), atomically add dz into the dense word gradient (read-modify-write in L2), keep
  the position, LayerNorm-affine (and type) gradients in registers: 1,040 B per token, 34 MB per
  step, plus the per-chunk position partials (on an H100, 32 chunks x 128 KB written and summed:
  8.4 MB). Both pay the dense word gradient's memset (30,522 x 128 x 4 B = 15.6 MB) and its touched
  rows. One kernel plus 4 small reductions/pads instead of 6+ launches over full activations.

Arithmetic: the three rows are summed in fp32 in the encoder's order ``(word + type) + pos``, fp32
statistics (mean and a two-pass variance over the row in registers), fp32 normalisation and affine.
Every weight is fp32 (the trainer keeps fp32 master weights); ``ids`` and ``type_ids`` int64 or int32;
H from 1 to 4096 (``MAX_N``); with ``type_ids`` given, at most ``MAX_TYPES`` token types.
ids must lie in [0, V) and type ids in [0, T): checked on CPU tensors; on CUDA the check would cost a
host sync, so it is not made (an out-of-range id there reads out of bounds, as a raw gather would).

Kernels:
- forward: a tile of ``BLOCK_M`` tokens x ``BLOCK_N`` (next power of two >= H, at least 32) columns per
  program, whole rows in registers; saves the per-token mean and 1/std (8 B per token). Packed: each
  run's tokens are tiled on their own (a tile never straddles runs).
- backward: a 2-D grid, (position blocks of ``BLOCK_M``) x (chunks of the batch). A program walks its
  batch chunk at fixed positions, so the position rows are loaded once and the position gradient of
  its tile accumulates in registers; it recomputes the sum, forms the LayerNorm input gradient dz,
  scatters dz into the dense fp32 word gradient with ``tl.atomic_add`` (skipping ``padding_idx``),
  and writes its partial position gradient (one (L, H) slab per batch chunk) and its partial sums of
  dln_weight (sum dy * xhat) and dln_bias (sum dy), reduced afterwards by ``sum(0)`` as in
  ``fused_layer_norm``. The type gradient: with ``type_ids=None`` every token adds to type row 0, so
  each program also writes its tokens' Σ dz, reduced with the LayerNorm partials in the same sum; with
  ``type_ids`` each tile reduces dz per type and adds it with one atomic vector add per type.
  Determinism: the position, type (``type_ids=None``) and LayerNorm-affine gradients are
  deterministic; the word gradient (and the type gradient with ``type_ids``) sums with atomics, so
  its fp32 rounding can vary from run to run on a GPU. Packed: grid axis 0 is (run, position block), so
  a program works within one run; its word/type atomics go to that run's slot of the (R, V, H) / (R, T, H)
  gradient and its partials to per-run slabs, summed per run.

CUDA tensors run Triton; CPU tensors run ``embedding_layer_norm_reference`` (or Triton under
``TRITON_INTERPRET=1``).
"""

from __future__ import annotations

import itertools
from typing import NamedTuple

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from ._compile import CompileSpec
from ._dispatch import check_dtype, use_triton
from ._pdl import enter, pdl

ID_DTYPES = (torch.int64, torch.int32)
WEIGHT_DTYPES = (torch.float32,)
MAX_N = 4096
MAX_TYPES = 16  # with type_ids: each backward tile reduces dz once per type
BLOCK_NS = tuple(2 ** k for k in range(5, 13))  # 32 ... 4096: every BLOCK_N the dispatcher can pick
_TL_IDS = {torch.int64: "i64", torch.int32: "i32"}

# num_warps per BLOCK_N (the backward's also per id dtype): spill-free on sm_80 and sm_90 for every
# variant, under Triton 3.6 (the GPU image's) and 3.9 (``python -m kernels._compile``). ptxas's register
# choices differ between the two, so no single count is clean for every variant at BLOCK_N 2048. It
# spilled the backward at 8 warps for BLOCK_N 32 (int32 ids) and for BLOCK_N 2048 (3.6, sm_90, int64
# ids with type_ids); at 16 warps for BLOCK_N 32, 512, 2048 and 4096 (some variants; 3.9, sm_80, int64
# with type_ids at 2048) and for BLOCK_N 1024 (3.6, sm_80); at 32 warps for BLOCK_N 2048 and 4096
# (int32 ids with type_ids). The forward as fused_layer_norm's.
_FWD_WARPS = {32: 8, 64: 16, 128: 16, 256: 16, 512: 16, 1024: 16, 2048: 16, 4096: 32}
_BWD_WARPS = {torch.int64: {32: 32, 64: 16, 128: 16, 256: 16, 512: 32, 1024: 32, 2048: 32, 4096: 8},
              torch.int32: {32: 32, 64: 16, 128: 16, 256: 16, 512: 32, 1024: 32, 2048: 8, 4096: 8}}
# The packed backward (its run offsets keep 6 more pointers live), per id dtype, spill-free on sm_80 and
# sm_90 with and without type_ids under Triton 3.6 and 3.9. Under 3.9 ptxas spilled 8-24 B at the solo
# counts for BLOCK_N 256 (16), 1024 (32), 2048 (8: int32, type_ids) and 4096 (8: int64, type_ids, sm_90).
# Under 3.6 it spilled 8-24 B at 1024 with 8 warps (type_ids; 16 warps spill too, and 32 under 3.9,
# int32 with type_ids: 4 is the only clean count), at 2048 with 32 warps (int64 without type_ids,
# sm_80; 8 and 16 spill int64 with type_ids under 3.9, so int64 runs 4) and at 4096 with 16 (int32;
# 32 spills with type_ids on both, so int32 runs 8). The spills come where ptxas reaches the cap that
# the warp count sets (64 registers a thread at 32 warps, 128 at 16).
_BWD_WARPS_PACKED = {torch.int64: {32: 32, 64: 16, 128: 16, 256: 32, 512: 32, 1024: 4, 2048: 4, 4096: 16},
                     torch.int32: {32: 32, 64: 16, 128: 16, 256: 32, 512: 32, 1024: 4, 2048: 32, 4096: 8}}


def _config(n: int, id_dtype: torch.dtype = torch.int64, packed: bool = False) -> tuple[int, int, int, int]:
    """(BLOCK_N, BLOCK_M, forward num_warps, backward num_warps) for hidden size ``n``, ids of
    ``id_dtype`` and packed runs or not: tiles of at least 2048 elements (whole rows)."""
    block_n = max(32, triton.next_power_of_2(n))
    block_m = max(1, 2048 // block_n)
    bwd_warps = (_BWD_WARPS_PACKED if packed else _BWD_WARPS)[id_dtype][block_n]
    return block_n, block_m, _FWD_WARPS[block_n], bwd_warps


def _empty(shape, dtype, device) -> torch.Tensor:
    """Every output buffer the kernels fill comes from here (tests poison it to catch unwritten memory)."""
    return torch.empty(shape, dtype=dtype, device=device)


@triton.jit
def _emb_ln_fwd_kernel(IDS, TIDS, WORD, POS, TYPE, W, B, Y, MEAN, RSTD, M, L, N, eps,
                       rows_per_run, tiles_per_run, word_run_stride, pos_run_stride, type_run_stride,
                       w_run_stride, b_run_stride,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HAS_TYPE_IDS: tl.constexpr,
                       PACKED: tl.constexpr, PDL: tl.constexpr = False):
    enter(PDL)
    pid = tl.program_id(0)
    if PACKED:  # tiles_per_run programs per run; a tile never straddles two runs
        run = pid // tiles_per_run
        run_start = run * rows_per_run  # a multiple of L, so rows % L is still the position
        rows = run_start + (pid - run * tiles_per_run) * BLOCK_M + tl.arange(0, BLOCK_M)
        row_end = run_start + rows_per_run
        run64 = run.to(tl.int64)
        WORD += run64 * word_run_stride
        POS += run64 * pos_run_stride
        TYPE += run64 * type_run_stride
        W += run64 * w_run_stride
        B += run64 * b_run_stride
    else:  # the packed-only arguments are unused
        rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
        row_end = M
    cols = tl.arange(0, BLOCK_N)
    row_mask = rows < row_end
    col_mask = cols < N
    mask = row_mask[:, None] & col_mask[None, :]

    ids = tl.load(IDS + rows, mask=row_mask, other=0).to(tl.int64)
    z = tl.load(WORD + ids[:, None] * N + cols[None, :], mask=mask, other=0.0)
    if HAS_TYPE_IDS:
        tids = tl.load(TIDS + rows, mask=row_mask, other=0).to(tl.int64)
        z += tl.load(TYPE + tids[:, None] * N + cols[None, :], mask=mask, other=0.0)
    else:
        z += tl.load(TYPE + cols, mask=col_mask, other=0.0)[None, :]
    pos = (rows % L).to(tl.int64)
    z += tl.load(POS + pos[:, None] * N + cols[None, :], mask=mask, other=0.0)

    mean = tl.sum(z, axis=1) / N
    d = tl.where(mask, z - mean[:, None], 0.0)
    var = tl.sum(d * d, axis=1) / N
    rstd = tl.div_rn(1.0, tl.sqrt_rn(var + eps))
    w = tl.load(W + cols, mask=col_mask, other=0.0)
    b = tl.load(B + cols, mask=col_mask, other=0.0)
    y = d * rstd[:, None] * w[None, :] + b[None, :]
    tl.store(Y + rows.to(tl.int64)[:, None] * N + cols[None, :], y, mask=mask)
    tl.store(MEAN + rows, mean, mask=row_mask)
    tl.store(RSTD + rows, rstd, mask=row_mask)


@triton.jit
def _emb_ln_bwd_kernel(IDS, TIDS, WORD, POS, TYPE, W, DY, MEAN, RSTD,
                       DWORD, DPOS_PART, DTYPE, DW_PART, DB_PART, DT_PART,
                       Bsz, L, N, T, padding_idx, batches_per_program,
                       dword_run_stride, word_run_stride, pos_run_stride, type_run_stride, w_run_stride,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HAS_TYPE_IDS: tl.constexpr,
                       PACKED: tl.constexpr, PDL: tl.constexpr = False):
    enter(PDL)
    if PACKED:  # axis 0 is (run, position block); every program stays within one run
        pos_blocks = tl.cdiv(L, BLOCK_M)
        run = tl.program_id(0) // pos_blocks
        pid_l = tl.program_id(0) - run * pos_blocks
        pid_c = tl.program_id(1)
        slab = run * tl.num_programs(1) + pid_c  # this program's (L, N) position-gradient partial
        pid = slab * pos_blocks + pid_l  # partials laid out (R, batch chunks x position blocks, N)
        run64 = run.to(tl.int64)
        WORD += run64 * word_run_stride
        POS += run64 * pos_run_stride
        TYPE += run64 * type_run_stride
        W += run64 * w_run_stride
        DWORD += run64 * dword_run_stride  # each run's (V, N) contiguous; the (R, T, N) type gradient contiguous
        DTYPE += run64 * T * N
        run_first_row = run * Bsz * L
    else:  # the packed-only arguments are unused
        pid_l = tl.program_id(0)
        pid_c = tl.program_id(1)
        slab = pid_c
        pid = pid_c * tl.num_programs(0) + pid_l
    pos = pid_l * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_N)
    pos_mask = pos < L
    col_mask = cols < N
    mask = pos_mask[:, None] & col_mask[None, :]
    pos_offs = pos.to(tl.int64)[:, None] * N + cols[None, :]

    w = tl.load(W + cols, mask=col_mask, other=0.0)
    p_rows = tl.load(POS + pos_offs, mask=mask, other=0.0)  # the same positions for every batch row
    if not HAS_TYPE_IDS:
        t_row = tl.load(TYPE + cols, mask=col_mask, other=0.0)
    dpos_acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    dw_acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    db_acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    b_start = pid_c * batches_per_program
    b_end = tl.minimum(b_start + batches_per_program, Bsz)
    for bi in range(b_start, b_end):
        rows = bi * L + pos  # < B * L, an i32 like M in the forward
        if PACKED:
            rows += run_first_row  # < R * B * L = M
        offs = rows.to(tl.int64)[:, None] * N + cols[None, :]
        ids = tl.load(IDS + rows, mask=pos_mask, other=0).to(tl.int64)
        word_offs = ids[:, None] * N + cols[None, :]
        z = tl.load(WORD + word_offs, mask=mask, other=0.0)
        if HAS_TYPE_IDS:
            tids = tl.load(TIDS + rows, mask=pos_mask, other=0).to(tl.int64)
            z += tl.load(TYPE + tids[:, None] * N + cols[None, :], mask=mask, other=0.0)
        else:
            z += t_row[None, :]
        z += p_rows
        mean = tl.load(MEAN + rows, mask=pos_mask, other=0.0)
        rstd = tl.load(RSTD + rows, mask=pos_mask, other=0.0)
        xhat = tl.where(mask, (z - mean[:, None]) * rstd[:, None], 0.0)
        dy = tl.load(DY + offs, mask=mask, other=0.0)
        wdy = dy * w[None, :]
        c1 = tl.sum(xhat * wdy, axis=1) / N
        c2 = tl.sum(wdy, axis=1) / N
        dz = (wdy - (xhat * c1[:, None] + c2[:, None])) * rstd[:, None]
        word_mask = mask & (ids != padding_idx)[:, None]
        tl.atomic_add(DWORD + word_offs, dz, mask=word_mask, sem="relaxed")
        if HAS_TYPE_IDS:
            for t in range(T):
                dt = tl.sum(tl.where((tids == t)[:, None], dz, 0.0), axis=0)
                tl.atomic_add(DTYPE + t * N + cols, dt, mask=col_mask, sem="relaxed")
        dpos_acc += dz
        dw_acc += tl.sum(dy * xhat, axis=0)
        db_acc += tl.sum(dy, axis=0)
    tl.store(DPOS_PART + slab.to(tl.int64) * L * N + pos_offs, dpos_acc, mask=mask)
    tl.store(DW_PART + pid * N + cols, dw_acc, mask=col_mask)
    tl.store(DB_PART + pid * N + cols, db_acc, mask=col_mask)
    if not HAS_TYPE_IDS:  # every token is type 0: that row's gradient is Σ dz, this program's share of it
        tl.store(DT_PART + pid * N + cols, tl.sum(dpos_acc, axis=0), mask=col_mask)


def _bwd_grid(device: torch.device, batch: int, length: int, block_m: int,
              runs: int = 1) -> tuple[int, int, int]:
    """(position blocks, batch chunks, batches per program), per run: about 4 programs per SM on CUDA,
    shared by the ``runs`` packed runs."""
    pos_blocks = triton.cdiv(length, block_m)
    if device.type == "cuda":
        target = 4 * torch.cuda.get_device_properties(device).multi_processor_count
    else:
        target = 8  # the interpreter: a few programs, so the cross-program reductions are exercised
    chunks = max(1, min(batch, target // (pos_blocks * runs)))
    per_program = triton.cdiv(batch, chunks)
    return pos_blocks, triton.cdiv(batch, per_program), per_program


def _rows_contiguous(t: torch.Tensor) -> torch.Tensor:
    """A packed table (R, ..., H) as the kernels read it: run r at ``t + r * t.stride(0)``, each run's
    slice contiguous. The optimiser's strided views already are (used in place, whatever their run
    stride); anything else is copied."""
    if t.shape[0] > 0 and t[0].is_contiguous():
        return t
    return t.contiguous()


class EmbeddingGradParts(NamedTuple):
    """``embedding_layer_norm_backward(..., reduce=False)``: the word gradient and the backward programs'
    partial sums of the others, leading (R,) for packed runs. Summed over their second-to-last-but-one axis
    (``pos``: over C) or their middle axis (the rest: over P) they give the gradients of the position rows
    [0, L), type row 0 (every token is type 0) and the LayerNorm's weight and bias; every other position and
    type row gets zero."""
    word: torch.Tensor  # (V, H): dz scattered by id (none into padding_idx)
    pos: torch.Tensor  # (C, L, H): one slab per batch chunk
    type0: torch.Tensor  # (P, H): Σ dz of each program's tokens
    ln_weight: torch.Tensor  # (P, H): Σ dy * xhat
    ln_bias: torch.Tensor  # (P, H): Σ dy


def _operands(ids, type_ids, *tables):
    """ids, type ids (ids' dtype) and the tables and LayerNorm weights as the kernels read them: contiguous,
    or for packed runs each run's slice contiguous at any run stride (the optimiser's views, in place)."""
    ids_c = ids.contiguous()
    tids_c = None if type_ids is None else type_ids.to(ids.dtype).contiguous()
    keep = _rows_contiguous if tables[0].dim() == 3 else (lambda t: t.contiguous())
    return (ids_c, tids_c, *(None if t is None else keep(t) for t in tables))


def _forward(ids, type_ids, word, pos, typ, weight, bias, eps):
    """The forward kernel: (y (M, H), mean (M,), rstd (M,)) and the tensors the backward reads."""
    packed = word.dim() == 3
    runs = ids.shape[0] if packed else 1
    batch, length = ids.shape[-2:]
    n = word.shape[-1]
    m = runs * batch * length
    ids_c, tids_c, word, pos, typ, weight, bias = _operands(ids, type_ids, word, pos, typ, weight, bias)
    block_n, block_m, warps, _ = _config(n, ids.dtype)
    if packed:  # run r's tokens are the contiguous rows [r * B * L, (r + 1) * B * L)
        tiles_per_run = triton.cdiv(batch * length, block_m)
        grid = runs * tiles_per_run
        packed_args = (batch * length, tiles_per_run, word.stride(0), pos.stride(0), typ.stride(0),
                       weight.stride(0), bias.stride(0))
    else:  # the packed-only arguments are constants, so they add no specialisations
        grid = triton.cdiv(m, block_m)
        packed_args = (0,) * 7
    y = _empty((m, n), torch.float32, ids.device)
    mean = _empty((m,), torch.float32, ids.device)
    rstd = _empty((m,), torch.float32, ids.device)
    if m > 0:
        _emb_ln_fwd_kernel[(grid,)](
            ids_c, ids_c if tids_c is None else tids_c, word, pos, typ, weight, bias, y, mean, rstd,
            m, length, n, eps, *packed_args,
            BLOCK_M=block_m, BLOCK_N=block_n, HAS_TYPE_IDS=tids_c is not None, PACKED=packed,
            num_warps=warps, **pdl(y))
    return y, mean, rstd, (ids_c, tids_c, word, pos, typ, weight)


def _backward_parts(dy, ids, tids, word, pos, typ, weight, mean, rstd, padding_idx, dword):
    """The backward kernel: dz scattered into ``dword`` (zeros made here when None), and the partial sums
    (position slabs (R, C, L, H); LayerNorm weight, bias and type-0 (3, R, P, H); with type ids, the type
    gradient (R, T, H) from atomics in place of the type-0 partials)."""
    packed = word.dim() == 3
    runs = ids.shape[0] if packed else 1
    batch, length = ids.shape[-2:]
    vocab, n = word.shape[-2:]
    n_types = typ.shape[-2]
    dev = ids.device
    lead = (runs,) if packed else ()
    dy2 = dy.reshape(runs * batch * length, n).to(torch.float32).contiguous()
    block_n, block_m, _, warps = _config(n, ids.dtype, packed)
    if dword is None:
        dword = torch.zeros(lead + (vocab, n), dtype=torch.float32, device=dev)  # atomics accumulate into it
    dtype_ = torch.zeros((runs, n_types, n), dtype=torch.float32, device=dev) if tids is not None else None
    if runs * batch * length == 0:
        return dword, torch.zeros((runs, 1, length, n), device=dev), torch.zeros((3, runs, 1, n), device=dev), dtype_
    pos_blocks, chunks, per_program = _bwd_grid(dev, batch, length, block_m, runs)
    dpos_part = _empty((runs * chunks, length, n), torch.float32, dev)
    parts = _empty((3, runs * pos_blocks * chunks, n), torch.float32, dev)  # dweight's, dbias's, type 0's
    packed_args = ((dword.stride(0), word.stride(0), pos.stride(0), typ.stride(0), weight.stride(0)) if packed
                   else (0,) * 5)
    _emb_ln_bwd_kernel[(runs * pos_blocks, chunks)](
        ids, ids if tids is None else tids, word, pos, typ, weight, dy2, mean, rstd,
        dword, dpos_part, dword if dtype_ is None else dtype_, parts[0], parts[1], parts[2],
        batch, length, n, n_types, padding_idx, per_program, *packed_args,
        BLOCK_M=block_m, BLOCK_N=block_n, HAS_TYPE_IDS=tids is not None, PACKED=packed,
        num_warps=warps, **pdl(dy2))
    return dword, dpos_part.view(runs, chunks, length, n), parts.view(3, runs, pos_blocks * chunks, n), dtype_


def _reduce(dword, dpos_part, parts, dtype_, n_pos, n_types, packed):
    """The partials summed into the five gradients, each its input's shape."""
    length, n = dpos_part.shape[-2:]
    dpos = dpos_part.sum(1)
    dw, db, dt = parts.sum(2)  # one reduction for the three
    if dtype_ is None:  # every token is type 0
        dtype_ = F.pad(dt[:, None], (0, 0, 0, n_types - 1))
    if n_pos > length:
        dpos = F.pad(dpos, (0, 0, 0, n_pos - length))
    if not packed:
        dpos, dtype_, dw, db = dpos[0], dtype_[0], dw[0], db[0]
    return dword, dpos, dtype_, dw, db


class _EmbeddingLayerNormFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, ids, type_ids, word, pos, typ, weight, bias, eps, padding_idx):
        y, mean, rstd, kept = _forward(ids, type_ids, word, pos, typ, weight, bias, eps)
        ctx.save_for_backward(*kept, mean, rstd)
        ctx.padding_idx = -1 if padding_idx is None else padding_idx
        return y.view(ids.shape + (word.shape[-1],))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        ids, tids, word, pos, typ, weight, mean, rstd = ctx.saved_tensors
        parts = _backward_parts(dy, ids, tids, word, pos, typ, weight, mean, rstd, ctx.padding_idx, None)
        grads = _reduce(*parts, pos.shape[-2], typ.shape[-2], word.dim() == 3)
        return (None, None, *(g if need else None for g, need in zip(grads, ctx.needs_input_grad[2:7])),
                None, None)


def _check(ids, word_weight, pos_weight, type_weight, ln_weight, ln_bias, type_ids, padding_idx) -> None:
    name = "embedding_layer_norm"
    packed = isinstance(word_weight, torch.Tensor) and word_weight.dim() == 3
    lead, runs_ = (1, "R, ") if packed else (0, "")
    why = " (packed runs: word_weight is (R, V, H))" if packed else ""
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2 + lead:
        raise ValueError(f"{name}: ids must be a ({runs_}B, L) tensor of token ids{why}")
    check_dtype(f"{name}: ids", ids, ID_DTYPES)
    for arg, t in (("word_weight", word_weight), ("pos_weight", pos_weight), ("type_weight", type_weight)):
        if not isinstance(t, torch.Tensor) or t.dim() != 2 + lead:
            raise ValueError(f"{name}: {arg} must be a {2 + lead}-D ({runs_}rows, H) tensor{why}")
        check_dtype(f"{name}: {arg}", t, WEIGHT_DTYPES)
    vocab, n = word_weight.shape[-2:]
    if not 1 <= n <= MAX_N:
        raise ValueError(f"{name}: hidden size {n} is unsupported; supported: 1 to {MAX_N}")
    for arg, t in (("pos_weight", pos_weight), ("type_weight", type_weight)):
        if t.shape[-1] != n or t.shape[-2] < 1:
            raise ValueError(f"{name}: {arg} has shape {tuple(t.shape)}; supported: ({runs_}rows >= 1, {n}), "
                             f"the hidden size of word_weight")
    if ids.shape[-1] > pos_weight.shape[-2]:
        raise ValueError(f"{name}: sequence length {ids.shape[-1]} exceeds the {pos_weight.shape[-2]} "
                         f"positions of pos_weight")
    want = (word_weight.shape[0], n) if packed else (n,)
    for arg, t in (("ln_weight", ln_weight), ("ln_bias", ln_bias)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name}: {arg} must be a tensor of shape {want}")
        check_dtype(f"{name}: {arg}", t, WEIGHT_DTYPES)
        if tuple(t.shape) != want:
            raise ValueError(f"{name}: {arg} has shape {tuple(t.shape)}; supported: {want}, "
                             f"({runs_}the hidden size){why}")
    if packed:
        runs = word_weight.shape[0]
        got = {arg: t.shape[0] for arg, t in (("ids", ids), ("pos_weight", pos_weight),
                                              ("type_weight", type_weight))}
        if runs < 1 or any(r != runs for r in got.values()):
            raise ValueError(f"{name}: packed runs need the same R >= 1 on every input's first axis; "
                             f"word_weight has R = {runs}, " + ", ".join(f"{a} {r}" for a, r in got.items()))
    if type_ids is not None:
        if not isinstance(type_ids, torch.Tensor) or type_ids.shape != ids.shape:
            raise ValueError(f"{name}: type_ids must be a tensor of ids' shape {tuple(ids.shape)}")
        check_dtype(f"{name}: type_ids", type_ids, ID_DTYPES)
        if type_weight.shape[-2] > MAX_TYPES:
            raise ValueError(f"{name}: {type_weight.shape[-2]} token types with type_ids; supported: "
                             f"1 to {MAX_TYPES} (or type_ids=None: every token type 0)")
    if padding_idx is not None and not (isinstance(padding_idx, int) and -vocab <= padding_idx < vocab):
        raise ValueError(f"{name}: padding_idx {padding_idx!r} is unsupported; supported: None or an int "
                         f"in [-{vocab}, {vocab})")
    # Out-of-range ids: checked where it costs no host sync (CPU tensors); see the module docstring.
    for arg, t, hi in (("ids", ids, vocab), ("type_ids", type_ids, type_weight.shape[-2])):
        if t is not None and t.device.type == "cpu" and t.numel() and (t.min() < 0 or t.max() >= hi):
            raise ValueError(f"{name}: {arg} out of range; supported: 0 to {hi - 1}")


def embedding_layer_norm_reference(ids: torch.Tensor, word_weight: torch.Tensor, pos_weight: torch.Tensor,
                                   type_weight: torch.Tensor, ln_weight: torch.Tensor, ln_bias: torch.Tensor,
                                   eps: float = 1e-12, type_ids: torch.Tensor | None = None,
                                   padding_idx: int | None = None) -> torch.Tensor:
    """The executable spec: ``LayerNorm((word[ids] + type[type_ids or 0]) + pos[:L])`` in the weights'
    dtype (fp64 weights stay fp64), the word lookup F.embedding's (``padding_idx`` row: no gradient).
    Differentiable by autograd. Packed (word_weight (R, V, H)): a loop over the runs, run r's tokens
    ``ids[r]`` through run r's tables and LayerNorm."""
    if word_weight.dim() == 3:
        return torch.stack([
            embedding_layer_norm_reference(ids[r], word_weight[r], pos_weight[r], type_weight[r], ln_weight[r],
                                           ln_bias[r], eps, None if type_ids is None else type_ids[r],
                                           padding_idx)
            for r in range(word_weight.shape[0])])
    z = _sum_reference(ids, word_weight, pos_weight, type_weight, type_ids, padding_idx)
    return F.layer_norm(z, (word_weight.shape[1],), ln_weight, ln_bias, eps)


def embedding_layer_norm(ids: torch.Tensor, word_weight: torch.Tensor, pos_weight: torch.Tensor,
                         type_weight: torch.Tensor, ln_weight: torch.Tensor, ln_bias: torch.Tensor,
                         eps: float = 1e-12, type_ids: torch.Tensor | None = None,
                         padding_idx: int | None = None) -> torch.Tensor:
    """``LayerNorm(word[ids] + type[type_ids] + pos[arange(L)])``: ids (B, L) -> (B, L, H) fp32,
    differentiable in the five weights (dense fp32 gradients; none into row ``padding_idx`` of the
    word table). ``type_ids=None``: every token is type 0."""
    _check(ids, word_weight, pos_weight, type_weight, ln_weight, ln_bias, type_ids, padding_idx)
    if use_triton(ids, type_ids, word_weight, pos_weight, type_weight, ln_weight, ln_bias):
        pad = None if padding_idx is None else padding_idx % word_weight.shape[-2]
        return _EmbeddingLayerNormFn.apply(ids, type_ids, word_weight, pos_weight, type_weight, ln_weight,
                                           ln_bias, float(eps), pad)
    return embedding_layer_norm_reference(ids, word_weight, pos_weight, type_weight, ln_weight, ln_bias, eps,
                                          type_ids, padding_idx)


def embedding_layer_norm_forward(ids: torch.Tensor, word_weight: torch.Tensor, pos_weight: torch.Tensor,
                                 type_weight: torch.Tensor, ln_weight: torch.Tensor, ln_bias: torch.Tensor,
                                 eps: float = 1e-12, type_ids: torch.Tensor | None = None
                                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``embedding_layer_norm``'s forward alone, not differentiable: (y (..., L, H), mean, rstd), the last two
    each token's fp32 mean and 1/std, flat (R·B·L,), for ``embedding_layer_norm_backward``."""
    _check(ids, word_weight, pos_weight, type_weight, ln_weight, ln_bias, type_ids, None)
    n = word_weight.shape[-1]
    if use_triton(ids, type_ids, word_weight, pos_weight, type_weight, ln_weight, ln_bias):
        y, mean, rstd, _ = _forward(ids, type_ids, word_weight, pos_weight, type_weight, ln_weight, ln_bias,
                                    float(eps))
        return y.view(ids.shape + (n,)), mean, rstd
    if word_weight.dim() == 3:  # the CPU: run by run
        outs = [embedding_layer_norm_forward(ids[r], word_weight[r], pos_weight[r], type_weight[r], ln_weight[r],
                                             ln_bias[r], eps, None if type_ids is None else type_ids[r])
                for r in range(word_weight.shape[0])]
        return torch.stack([o[0] for o in outs]), torch.cat([o[1] for o in outs]), torch.cat([o[2] for o in outs])
    z = _sum_reference(ids, word_weight, pos_weight, type_weight, type_ids).float()
    mean = z.mean(-1, keepdim=True)
    rstd = torch.rsqrt(z.var(-1, unbiased=False, keepdim=True) + eps)
    return (z - mean) * rstd * ln_weight + ln_bias, mean.reshape(-1), rstd.reshape(-1)


def embedding_layer_norm_backward(dy: torch.Tensor, ids: torch.Tensor, word_weight: torch.Tensor,
                                  pos_weight: torch.Tensor, type_weight: torch.Tensor, ln_weight: torch.Tensor,
                                  mean: torch.Tensor, rstd: torch.Tensor, type_ids: torch.Tensor | None = None,
                                  padding_idx: int | None = None, dword: torch.Tensor | None = None,
                                  reduce: bool = True):
    """``embedding_layer_norm``'s backward alone, from ``embedding_layer_norm_forward``'s mean and rstd.

    Returns the gradients of (word, pos, type, ln_weight, ln_bias), each its input's shape; with
    ``reduce=False`` (``type_ids=None`` only) an ``EmbeddingGradParts``: the word gradient and the backward
    programs' partial sums, for a caller that sums them elsewhere (the trainer's weight-gradient launch).
    ``dword``: a float32 tensor of the word table's shape (each run's (V, H) contiguous, any run stride) that
    the word gradient is added into (zero it for a fresh one), in place of new zeros."""
    _check(ids, word_weight, pos_weight, type_weight, ln_weight, ln_weight, type_ids, padding_idx)
    name = "embedding_layer_norm_backward"
    if not reduce and type_ids is not None:
        raise ValueError(f"{name}: reduce=False needs type_ids=None (the type gradient from the position partials)")
    want = (tuple(ids.shape) + (word_weight.shape[-1],), (ids.numel(),))
    if tuple(dy.shape) != want[0] or tuple(mean.shape) != want[1] or tuple(rstd.shape) != want[1]:
        raise ValueError(f"{name}: dy must be {want[0]} and mean, rstd {want[1]}; got {tuple(dy.shape)}, "
                         f"{tuple(mean.shape)}, {tuple(rstd.shape)}")
    if dword is not None and not word_grad_fits(dword, word_weight):
        raise ValueError(f"{name}: dword must be float32 {tuple(word_weight.shape)}, each run's (V, H) contiguous and "
                         f"apart from the others; got {dword.dtype} {tuple(dword.shape)} strides {dword.stride()}")
    pad = None if padding_idx is None else padding_idx % word_weight.shape[-2]
    packed = word_weight.dim() == 3
    if use_triton(dy, ids, type_ids, word_weight, pos_weight, type_weight, ln_weight, mean, rstd, dword):
        ids_c, tids_c, word, pos, typ, weight = _operands(ids, type_ids, word_weight, pos_weight, type_weight,
                                                          ln_weight)
        parts = _backward_parts(dy, ids_c, tids_c, word, pos, typ, weight, mean, rstd,
                                -1 if pad is None else pad, dword)
        if reduce:
            return _reduce(*parts, pos_weight.shape[-2], type_weight.shape[-2], packed)
        dword, dpos_part, affine, _ = parts
        dw, db, dt = affine if packed else affine[:, 0]
        return EmbeddingGradParts(dword, dpos_part if packed else dpos_part[0], dt, dw, db)
    if packed:  # the CPU: run by run, each one program's partials
        outs = [embedding_layer_norm_backward(dy[r], ids[r], word_weight[r], pos_weight[r], type_weight[r],
                                              ln_weight[r], *(t.view(ids.shape[0], -1)[r] for t in (mean, rstd)),
                                              None if type_ids is None else type_ids[r], padding_idx,
                                              None if dword is None else dword[r], reduce)
                for r in range(word_weight.shape[0])]
        grads = [torch.stack(g) for g in zip(*outs)]
        if dword is not None:
            grads[0] = dword
        return tuple(grads) if reduce else EmbeddingGradParts(*grads)
    # the CPU, one sequence of tables: LayerNorm's backward from the given statistics, then each table's share
    z = _sum_reference(ids, word_weight, pos_weight, type_weight, type_ids).float()
    xhat = (z - mean.view(*ids.shape, 1)) * rstd.view(*ids.shape, 1)
    dy = dy.float()
    wdy = dy * ln_weight
    dz = (wdy - xhat * (xhat * wdy).mean(-1, keepdim=True) - wdy.mean(-1, keepdim=True)) * rstd.view(*ids.shape, 1)
    rows, flat_ids = dz.reshape(-1, dz.shape[-1]), ids.reshape(-1)
    if pad is not None:
        rows = rows * (flat_ids != pad)[:, None]
    gword = torch.zeros_like(word_weight, dtype=torch.float32) if dword is None else dword
    gword.index_add_(0, flat_ids, rows)
    gpos = torch.zeros_like(pos_weight, dtype=torch.float32)
    gpos[:ids.shape[-1]] = dz.sum(0)
    gtype = torch.zeros_like(type_weight, dtype=torch.float32)
    gtype.index_add_(0, torch.zeros_like(flat_ids) if type_ids is None else type_ids.reshape(-1), dz.reshape(rows.shape))
    gw, gb = (dy * xhat).sum((0, 1)), dy.sum((0, 1))
    if reduce:
        return gword, gpos, gtype, gw, gb
    return EmbeddingGradParts(gword, gpos[None, :ids.shape[-1]], gtype[:1], gw[None], gb[None])


def word_grad_fits(dword: torch.Tensor, word_weight: torch.Tensor) -> bool:
    """Whether the backward can add the word gradient into ``dword``: float32, the table's shape, each run's
    (V, H) contiguous and its runs apart (a run stride of at least V·H: no run adds into another's)."""
    if dword.dtype != torch.float32 or dword.shape != word_weight.shape:
        return False
    if dword.dim() == 2:
        return dword.is_contiguous()
    return dword[0].is_contiguous() and (dword.shape[0] == 1 or dword.stride(0) >= dword[0].numel())


def _sum_reference(ids, word_weight, pos_weight, type_weight, type_ids, padding_idx=None):
    """``(word[ids] + type[type_ids or 0]) + pos[:L]`` for one sequence of tables, in their dtype."""
    t = type_weight[0] if type_ids is None else F.embedding(type_ids, type_weight)
    return F.embedding(ids, word_weight, padding_idx=padding_idx) + t + pos_weight[:ids.shape[-1]]


def compile_specs() -> list[CompileSpec]:
    """Every configuration ``embedding_layer_norm`` can launch: forward and backward x BLOCK_N x id dtype
    x type_ids given or not x packed runs or not."""
    specs = []
    for block_n in BLOCK_NS:
        for id_dtype, it in _TL_IDS.items():
            for has_tids, packed in itertools.product((False, True), (False, True)):
                _, block_m, fwd_warps, bwd_warps = _config(block_n, id_dtype, packed)
                consts = dict(BLOCK_M=block_m, BLOCK_N=block_n, HAS_TYPE_IDS=has_tids, PACKED=packed)
                tag = (f"BLOCK_M={block_m},BLOCK_N={block_n},{it}{',type_ids' if has_tids else ''}"
                       f"{',packed' if packed else ''}")
                specs.append(CompileSpec(
                    name=f"embedding_layer_norm_fwd[{tag}]", fn=_emb_ln_fwd_kernel,
                    signature=dict(IDS=f"*{it}", TIDS=f"*{it}", WORD="*fp32", POS="*fp32", TYPE="*fp32",
                                   W="*fp32", B="*fp32", Y="*fp32", MEAN="*fp32", RSTD="*fp32", M="i32",
                                   L="i32", N="i32", eps="fp32", rows_per_run="i32", tiles_per_run="i32",
                                   word_run_stride="i32", pos_run_stride="i32", type_run_stride="i32",
                                   w_run_stride="i32", b_run_stride="i32", BLOCK_M="constexpr",
                                   BLOCK_N="constexpr", HAS_TYPE_IDS="constexpr", PACKED="constexpr"),
                    constexprs=consts, num_warps=fwd_warps))
                specs.append(CompileSpec(
                    name=f"embedding_layer_norm_bwd[{tag}]", fn=_emb_ln_bwd_kernel,
                    signature=dict(IDS=f"*{it}", TIDS=f"*{it}", WORD="*fp32", POS="*fp32", TYPE="*fp32",
                                   W="*fp32", DY="*fp32", MEAN="*fp32", RSTD="*fp32", DWORD="*fp32",
                                   DPOS_PART="*fp32", DTYPE="*fp32", DW_PART="*fp32", DB_PART="*fp32",
                                   DT_PART="*fp32", Bsz="i32", L="i32", N="i32", T="i32", padding_idx="i32",
                                   batches_per_program="i32", dword_run_stride="i32", word_run_stride="i32",
                                   pos_run_stride="i32", type_run_stride="i32", w_run_stride="i32",
                                   BLOCK_M="constexpr", BLOCK_N="constexpr", HAS_TYPE_IDS="constexpr",
                                   PACKED="constexpr"),
                    constexprs=consts, num_warps=bwd_warps))
    return specs
