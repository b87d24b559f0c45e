"""Fused scaled-dot-product attention: one Triton forward kernel, three backward kernels.

``attention(q, k, v, key_padding_mask=None, causal=False, sm_scale=None)`` for q of shape
(B, H, Lq, D) and k, v of shape (B, H, Lk, D) computes ``softmax(q k^T * sm_scale + bias) v``
where the bias is -inf for keys that ``key_padding_mask`` (bool (B, Lk), True = the key takes
part) switches off and, with ``causal``, for keys j > i + Lk - Lq (bottom-right aligned, so a
single query, Lq = 1, sees every key). A query row with no visible key outputs zeros and gets
zero gradients -- never NaN. Any head size D from 1 to 128: the kernels pad it to
BLOCK_D = max(16, next_pow2(D)) lanes and mask the padded ones (they load 0 and are never stored),
so one compiled variant per BLOCK_D covers every D it pads; D = BLOCK_D compiles without the lane
mask. Every launch grid is (B*H, blocks): B*H on axis 0, whose CUDA limit is 2**31 - 1 (axes 1 and
2 stop at 65,535, which a batch of 16,384 with 4 heads would pass).

Forward (FlashAttention-2 style). One program owns BLOCK_M query rows of one (batch, head) and
streams over the keys in blocks of BLOCK_N. For each block it forms S = Q K^T on the tensor
cores, and keeps a running row maximum m, a running row sum l of exp(S - m) and an output
accumulator rescaled by exp(m_old - m_new) whenever the maximum grows ("online softmax"). Only
O and the row log-sum-exp L = m + log(l) are written, so no Lq x Lk matrix ever reaches memory.
Exponentials are base 2 (exp2 is one instruction): scores are scaled by sm_scale * log2(e) and
L is stored in base 2.

Backward. With P = exp(S - L) recomputed from the saved L, dV = P^T dO, dP = dO V^T,
dS = P * (dP - delta) where delta = rowsum(dO * O), dQ = dS K * sm_scale, dK = dS^T Q * sm_scale.
  1. ``_attn_bwd_dq``: one program per query block, looping over the visible key blocks; it also
     computes delta for its rows and stores it (one tile of O read, where a launch of its own was).
  2. ``_attn_bwd_dkdv``: one program per key block, looping over the query blocks that can see
     it, accumulating dK and dV in registers; it reads delta.
Splitting dK/dV from dQ costs one extra recomputation of S but needs no atomics and keeps every
gradient a plain store (deterministic).

Precision. Accumulation is fp32 everywhere; the probabilities (and dS) are cast to the input
dtype before their matmul, as in FlashAttention. bf16/fp16 use the tensor cores directly. fp32
uses them too, in one of two modes chosen by PyTorch's own switch for fp32 matmuls
(``torch.backends.cuda.matmul.allow_tf32``, also set by ``torch.set_float32_matmul_precision``):
off (PyTorch's default) gives "tf32x3" -- each operand split into a TF32 high part and a TF32
remainder, three MMAs, close to fp32 accuracy, as PyTorch's memory-efficient SDPA kernel does
for fp32 -- and on gives plain TF32 (10-bit mantissa inputs, a third of the MMAs). Exact "ieee"
products would run on the CUDA cores, without tensor cores, and spill registers at these tile
sizes (compiled and checked), so they are not shipped. Triton's interpreter computes every fp32 dot
exactly, whatever the mode, which is why the CPU tests can hold fp32 to ~1e-5.

Block sizes are picked by a rule from BLOCK_D (padded or not), dtype and Lq (``_TILES``,
``_PADDED_TILES``, ``_block_config``), not by autotuning: autotuning cannot time anything under
the interpreter, and a rule makes the set of shipped configurations finite, so
``compile_specs()`` can list and compile all of them.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

from ._dispatch import INTERPRET, check_dtype, use_triton
from ._dispatch import dot_precision as _dot_precision  # (a module name: the tests patch it)
from ._pdl import enter, pdl

SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
MAX_HEAD_DIM = 128
# Every head size 1..MAX_HEAD_DIM (a range, so ``D in SUPPORTED_HEAD_DIMS`` keeps working). The
# kernels pad D to one of _BLOCK_DS: the compiled variants are per BLOCK_D, not per D.
SUPPORTED_HEAD_DIMS = range(1, MAX_HEAD_DIM + 1)
_BLOCK_DS = (16, 32, 64, 128)
MAX_LEN = 1024
_MAX_GRID_X = 2**31 - 1  # CUDA's limit on launch-grid axis 0, which holds B*H
_LOG2E = 1.4426950408889634


# ----------------------------------------------------------------------------------------------
# Reference: the executable spec.
# ----------------------------------------------------------------------------------------------


def _visible(lq: int, lk: int, key_padding_mask: torch.Tensor | None, causal: bool,
             device: torch.device) -> torch.Tensor | None:
    """Bool mask broadcastable to (B, H, Lq, Lk), True where query i may attend to key j."""
    vis = None
    if causal:
        i = torch.arange(lq, device=device)[:, None]
        j = torch.arange(lk, device=device)[None, :]
        vis = j <= i + (lk - lq)
    if key_padding_mask is not None:
        pad = key_padding_mask[:, None, None, :]
        vis = pad if vis is None else vis & pad
    return vis


def attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                        key_padding_mask: torch.Tensor | None = None, causal: bool = False,
                        sm_scale: float | None = None) -> torch.Tensor:
    """Plain PyTorch attention, math in fp32, result in q.dtype. Differentiable."""
    if sm_scale is None:
        sm_scale = 1.0 / math.sqrt(q.shape[-1])
    s = torch.matmul(q.float(), k.float().transpose(-1, -2)) * sm_scale
    vis = _visible(q.shape[-2], k.shape[-2], key_padding_mask, causal, q.device)
    if vis is None:
        p = torch.softmax(s, dim=-1)
    else:
        # A row with no visible key would be softmax(-inf, ..., -inf) = NaN (and NaN gradients).
        # Give such rows finite scores, then zero their probabilities: output 0, gradients 0.
        s = s.masked_fill(~vis, float("-inf"))
        s = s.masked_fill(~vis.any(dim=-1, keepdim=True), 0.0)
        p = torch.softmax(s, dim=-1) * vis
    return torch.matmul(p, v.float()).to(q.dtype)


# ----------------------------------------------------------------------------------------------
# Triton kernels.
#
# q, o, do, dq (the query side) share one layout and k, v, dk, dv (the key side) another, each
# either contiguous (B, H, L, D) or with the heads interleaved in the rows, contiguous (B, L, H, D):
# a model's projection viewed as heads, read and written in place (``_Layout``). Element (b, h, l, d)
# of a side is at b * sb + h * sh + l * ROW + d, the strides sb, sh runtime numbers and the row
# stride ROW a constexpr (D or H * D; a padded head's tensors are contiguous and use the runtime D).
# lse and delta are (B*H, Lq) fp32, the padding mask is (B, Lk) uint8. Program axis 0 is the
# (batch, head) pair and axis 1 the row (or key) block: CUDA caps grid axes 1 and 2 at 65,535 but
# axis 0 at 2**31 - 1, and B*H passes 65,535 at a batch of 16,384 with 4 heads, while the blocks
# number at most cdiv(1024, 16) = 64. The pair's base offsets are computed in int64 so that
# B*H*L*D may exceed 2**31.
#
# The head size D is a runtime number; the tiles are BLOCK_D = max(16, next_pow2(D)) wide (tl.dot
# and tl.arange need a power of two, tl.dot at least 16). When D < BLOCK_D every load and store of
# a (rows, BLOCK_D) tile is masked to d < D: the padded lanes load 0, so they add nothing to
# Q K^T, and their columns of O, dQ, dK, dV (then 0 as well) are never stored; one compiled
# variant per BLOCK_D covers every D it pads. When D == BLOCK_D (EVEN_D: 16, 32, 64, 128) the
# kernels replace D by the constexpr BLOCK_D and drop the lane mask: with a runtime row stride
# and per-lane predicates, ptxas needs more registers (the padded variant spills at some of the
# power-of-two heads' tiles, so it gets its own, smaller tiles), and the power-of-two heads keep
# the code and tiles they had before padding existed.
#
# Causality is a runtime number, not a constexpr: key j is visible from query i when
# j <= i + shift, with shift = Lk - Lq when causal and shift = Lk (always true) otherwise. That
# halves the number of compiled variants, and the comparison is needed anyway to mask the
# ragged tail of the last key block.
# ----------------------------------------------------------------------------------------------


@triton.jit
def _mma(a, b, acc, DOT_PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """acc + a @ b with fp32 accumulation.

    UPCAST is set only under Triton's interpreter for bf16: it stores bf16 as raw uint16 and its
    tl.dot multiplies the bit patterns (triton-lang/triton#11584; bf16 is unsupported there).
    bf16 x bf16 products are exact in fp32, so the upcast computes what the tensor cores do.
    """
    if UPCAST:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, acc, input_precision=DOT_PRECISION)


@triton.jit
def _tile_mask(row_ok, offs_d, D, EVEN_D: tl.constexpr):
    """Mask of a (rows, BLOCK_D) tile: the rows that exist and, when D is padded, the lanes d < D."""
    if EVEN_D:
        mask = row_ok[:, None]
    else:
        mask = row_ok[:, None] & (offs_d < D)[None, :]
    return mask


@triton.jit
def _row_strides(D, EVEN_D: tl.constexpr, Q_ROW: tl.constexpr, KV_ROW: tl.constexpr):
    """The row strides of the query side (Q, O, dO, dQ) and the key side (K, V, dK, dV): the constexprs
    when D is not padded, else D (a padded head's tensors are contiguous (B, H, L, D))."""
    if EVEN_D:
        return Q_ROW, KV_ROW
    else:
        return D, D


@triton.jit
def _side_offset(bh, H, L, D, sb, sh, ROW: tl.constexpr, BLOCK_D: tl.constexpr):
    """Where (batch, head) pair bh (int64) starts on one side, in int64 (B*H*L*D may pass 2**31).
    Contiguous (ROW 0: a padded head; or BLOCK_D) it is bh * L * D, the code these kernels had before
    the interleaved layout existed: several tiles sit at the register limit, and computing it any other
    way (from the stride sh, say) tipped some of them into 8-16 B spills on sm_80. Interleaved, the
    pair is split in int32 (a 64-bit division costs registers)."""
    if ROW == 0 or ROW == BLOCK_D:
        off = bh * L * D
    else:
        pair = tl.program_id(0)
        b = pair // H
        off = b.to(tl.int64) * sb + (pair - b * H).to(tl.int64) * sh
    return off


@triton.jit
def _attn_fwd(Q, K, V, Mask, O, LSE,
              H, Lq, Lk, D, q_sb, q_sh, kv_sb, kv_sh, shift, mask_len, qk_scale,
              BLOCK_D: tl.constexpr, EVEN_D: tl.constexpr, Q_ROW: tl.constexpr, KV_ROW: tl.constexpr,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
              DOT_PRECISION: tl.constexpr, UPCAST: tl.constexpr, PDL: tl.constexpr = False):
    enter(PDL)
    D = BLOCK_D if EVEN_D else D
    q_row, kv_row = _row_strides(D, EVEN_D, Q_ROW, KV_ROW)
    bh = tl.program_id(0).to(tl.int64)
    start_m = tl.program_id(1) * BLOCK_M
    q_off = _side_offset(bh, H, Lq, D, q_sb, q_sh, Q_ROW, BLOCK_D)
    kv_off = _side_offset(bh, H, Lk, D, kv_sb, kv_sh, KV_ROW, BLOCK_D)
    Q += q_off
    O += q_off
    K += kv_off
    V += kv_off
    LSE += bh * Lq

    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    m_ok = offs_m < Lq
    q_tile = offs_m[:, None] * q_row + offs_d[None, :]
    q_mask = _tile_mask(m_ok, offs_d, D, EVEN_D)
    q = tl.load(Q + q_tile, mask=q_mask, other=0.0)

    # The running maximum starts finite, so that a block whose scores are all -inf (masked)
    # gives exp2(-inf - m) = 0 rather than exp2(-inf + inf) = NaN.
    m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    # Keys past the last one visible from this block's last row are never loaded.
    hi = tl.minimum(Lk, start_m + BLOCK_M + shift)
    for start_n in range(0, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        n_ok = offs_n < Lk
        kv_tile = offs_n[:, None] * kv_row + offs_d[None, :]
        kv_mask = _tile_mask(n_ok, offs_d, D, EVEN_D)
        k = tl.load(K + kv_tile, mask=kv_mask, other=0.0)
        v = tl.load(V + kv_tile, mask=kv_mask, other=0.0)
        pad = tl.load(Mask + (bh // H) * Lk + offs_n, mask=offs_n < mask_len, other=1)
        valid = (n_ok & (pad != 0))[None, :] & (offs_n[None, :] <= offs_m[:, None] + shift)

        s = _mma(q, tl.trans(k), None, DOT_PRECISION, UPCAST) * qk_scale
        s = tl.where(valid, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        acc = _mma(p.to(v.dtype), v, acc, DOT_PRECISION, UPCAST)
        m_i = m_new

    # A row that saw no key has l = 0: output 0 (its lse is never used: the backward masks
    # every one of its probabilities to 0 by the same visibility test).
    l_safe = tl.where(l_i > 0.0, l_i, 1.0)
    acc = acc / l_safe[:, None]
    lse = m_i + tl.log2(l_safe)
    # The store's offsets and mask are recomputed, not reused from the load: several tiles sit at
    # 255 registers, and keeping them live through the loop (or even naming a temporary here,
    # measured with Triton 3.9) tips them into spills. Check `python -m kernels._compile` after edits.
    tl.store(O + offs_m[:, None] * q_row + offs_d[None, :], acc.to(O.dtype.element_ty),
             mask=_tile_mask(m_ok, offs_d, D, EVEN_D))
    tl.store(LSE + offs_m, lse, mask=m_ok)


@triton.jit
def _attn_bwd_dkdv(Q, K, V, Mask, DO, LSE, Delta, DK, DV,
                   H, Lq, Lk, D, q_sb, q_sh, kv_sb, kv_sh, shift, mask_len, qk_scale, sm_scale,
                   BLOCK_D: tl.constexpr, EVEN_D: tl.constexpr, Q_ROW: tl.constexpr, KV_ROW: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   DOT_PRECISION: tl.constexpr, UPCAST: tl.constexpr, PDL: tl.constexpr = False):
    # Works in the transposed orientation (keys along rows) so that dK and dV come out of the
    # matmuls in the (BLOCK_N, BLOCK_D) layout they are stored in.
    enter(PDL)
    D = BLOCK_D if EVEN_D else D
    q_row, kv_row = _row_strides(D, EVEN_D, Q_ROW, KV_ROW)
    bh = tl.program_id(0).to(tl.int64)
    start_n = tl.program_id(1) * BLOCK_N
    q_off = _side_offset(bh, H, Lq, D, q_sb, q_sh, Q_ROW, BLOCK_D)
    kv_off = _side_offset(bh, H, Lk, D, kv_sb, kv_sh, KV_ROW, BLOCK_D)
    Q += q_off
    DO += q_off
    K += kv_off
    V += kv_off
    DK += kv_off
    DV += kv_off
    LSE += bh * Lq
    Delta += bh * Lq

    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    n_ok = offs_n < Lk
    kv_tile = offs_n[:, None] * kv_row + offs_d[None, :]
    kv_mask = _tile_mask(n_ok, offs_d, D, EVEN_D)
    k = tl.load(K + kv_tile, mask=kv_mask, other=0.0)
    v = tl.load(V + kv_tile, mask=kv_mask, other=0.0)
    pad = tl.load(Mask + (bh // H) * Lk + offs_n, mask=offs_n < mask_len, other=1)
    key_ok = n_ok & (pad != 0)

    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    # Query i sees key j when i >= j - shift: start at the first query block that sees start_n.
    lo = tl.maximum(start_n - shift, 0) // BLOCK_M * BLOCK_M
    for start_m in range(lo, Lq, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        m_ok = offs_m < Lq
        q_tile = offs_m[:, None] * q_row + offs_d[None, :]
        q_mask = _tile_mask(m_ok, offs_d, D, EVEN_D)
        q = tl.load(Q + q_tile, mask=q_mask, other=0.0)
        do = tl.load(DO + q_tile, mask=q_mask, other=0.0)
        lse = tl.load(LSE + offs_m, mask=m_ok, other=0.0)
        delta = tl.load(Delta + offs_m, mask=m_ok, other=0.0)
        valid = key_ok[:, None] & m_ok[None, :] & (offs_n[:, None] <= offs_m[None, :] + shift)

        sT = _mma(k, tl.trans(q), None, DOT_PRECISION, UPCAST) * qk_scale
        pT = tl.exp2(tl.where(valid, sT - lse[None, :], float("-inf")))
        dv = _mma(pT.to(do.dtype), do, dv, DOT_PRECISION, UPCAST)
        dpT = _mma(v, tl.trans(do), None, DOT_PRECISION, UPCAST)
        dsT = pT * (dpT - delta[None, :])
        dk = _mma(dsT.to(q.dtype), q, dk, DOT_PRECISION, UPCAST)

    ptrs = offs_n[:, None] * kv_row + offs_d[None, :]  # recomputed, as in _attn_fwd
    st_mask = _tile_mask(n_ok, offs_d, D, EVEN_D)
    tl.store(DK + ptrs, (dk * sm_scale).to(DK.dtype.element_ty), mask=st_mask)
    tl.store(DV + ptrs, dv.to(DV.dtype.element_ty), mask=st_mask)


@triton.jit
def _attn_bwd_dq(Q, K, V, Mask, DO, O, LSE, Delta, DQ, DK, DV,
                 H, Lq, Lk, D, q_sb, q_sh, kv_sb, kv_sh, shift, mask_len, qk_scale, sm_scale,
                 BLOCK_D: tl.constexpr, EVEN_D: tl.constexpr, Q_ROW: tl.constexpr, KV_ROW: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                 DOT_PRECISION: tl.constexpr, UPCAST: tl.constexpr, DKDV: tl.constexpr, PDL: tl.constexpr = False):
    # DKDV (the "dqkv" launch): one block holds every query of its (batch, head) -- Lq <= BLOCK_M, as in the
    # last layer that computes one position -- so each key block's dK and dV are complete once this loop has
    # seen it: they are written here, and the dK/dV kernel is not launched. DK, DV are unused otherwise.
    enter(PDL)
    D = BLOCK_D if EVEN_D else D
    q_row, kv_row = _row_strides(D, EVEN_D, Q_ROW, KV_ROW)
    bh = tl.program_id(0).to(tl.int64)
    start_m = tl.program_id(1) * BLOCK_M
    q_off = _side_offset(bh, H, Lq, D, q_sb, q_sh, Q_ROW, BLOCK_D)
    kv_off = _side_offset(bh, H, Lk, D, kv_sb, kv_sh, KV_ROW, BLOCK_D)
    Q += q_off
    DO += q_off
    O += q_off
    DQ += q_off
    K += kv_off
    V += kv_off
    if DKDV:
        DK += kv_off
        DV += kv_off
    LSE += bh * Lq
    Delta += bh * Lq

    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    m_ok = offs_m < Lq
    q_tile = offs_m[:, None] * q_row + offs_d[None, :]
    q_mask = _tile_mask(m_ok, offs_d, D, EVEN_D)
    do = tl.load(DO + q_tile, mask=q_mask, other=0.0)
    # delta = rowsum(dO * O) for this program's rows, stored for the dK/dV kernel that runs next: one
    # tile of O read here, where delta had a launch of its own (O is dead before Q is loaded)
    delta = tl.sum(tl.load(O + q_tile, mask=q_mask, other=0.0).to(tl.float32) * do.to(tl.float32), 1)
    if not DKDV:
        tl.store(Delta + offs_m, delta, mask=m_ok)
    q = tl.load(Q + q_tile, mask=q_mask, other=0.0)
    lse = tl.load(LSE + offs_m, mask=m_ok, other=0.0)

    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    # (DKDV: Lq <= BLOCK_M and shift >= Lk - Lq, so hi = Lk: every key block gets its dK and dV, zeros included)
    hi = tl.minimum(Lk, start_m + BLOCK_M + shift)
    for start_n in range(0, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        n_ok = offs_n < Lk
        kv_tile = offs_n[:, None] * kv_row + offs_d[None, :]
        kv_mask = _tile_mask(n_ok, offs_d, D, EVEN_D)
        # dP before K is loaded: V is dead by then, which keeps the fp32 TF32x3 tiles (operands
        # split in two) at BLOCK_D = 128 from spilling.
        v = tl.load(V + kv_tile, mask=kv_mask, other=0.0)
        dp = _mma(do, tl.trans(v), None, DOT_PRECISION, UPCAST)
        k = tl.load(K + kv_tile, mask=kv_mask, other=0.0)
        pad = tl.load(Mask + (bh // H) * Lk + offs_n, mask=offs_n < mask_len, other=1)
        valid = (n_ok & (pad != 0))[None, :] & m_ok[:, None] & (offs_n[None, :] <= offs_m[:, None] + shift)

        s = _mma(q, tl.trans(k), None, DOT_PRECISION, UPCAST) * qk_scale
        p = tl.exp2(tl.where(valid, s - lse[:, None], float("-inf")))
        ds = p * (dp - delta[:, None])
        dq = _mma(ds.to(k.dtype), k, dq, DOT_PRECISION, UPCAST)
        if DKDV:  # this key block's whole dV = Pᵀ dO and dK = dSᵀ Q (as the dK/dV kernel sums them)
            dv = _mma(tl.trans(p).to(do.dtype), do, None, DOT_PRECISION, UPCAST)
            tl.store(DV + kv_tile, dv.to(DV.dtype.element_ty), mask=kv_mask)
            dk = _mma(tl.trans(ds).to(q.dtype), q, None, DOT_PRECISION, UPCAST)
            tl.store(DK + kv_tile, (dk * sm_scale).to(DK.dtype.element_ty), mask=kv_mask)

    tl.store(DQ + offs_m[:, None] * q_row + offs_d[None, :], (dq * sm_scale).to(DQ.dtype.element_ty),
             mask=_tile_mask(m_ok, offs_d, D, EVEN_D))  # recomputed, as in _attn_fwd


# ----------------------------------------------------------------------------------------------
# Launch configuration: a rule, so that the shipped configurations are a finite, compiled list.
# ----------------------------------------------------------------------------------------------

# Tiles: (BLOCK_M, BLOCK_N, num_warps, num_stages) per operand mode, kernel and BLOCK_D (the
# padded head size: D = 20 runs the BLOCK_D = 32 tiles). "fwd" and "dq"
# own BLOCK_M query rows and stream BLOCK_N keys; "dkdv" owns BLOCK_N keys and streams BLOCK_M
# queries. Each entry is the largest tile, among those compiled for sm_80 and sm_90 (see
# compile_specs), that keeps register spills at zero on both, under Triton 3.6 (the GPU machines')
# and 3.9. TF32x3 splits every fp32 operand into two TF32 halves held in registers, so it needs
# smaller tiles than TF32 or 16-bit operands. Triton 3.6 spilled 16 B where 3.9 did not at TF32x3
# dq BLOCK_D = 32 (32, 16, 4 warps, 2 stages; sm_90) and dkdv BLOCK_D = 128 (16, 16, 4 warps;
# sm_80): the first single-buffers (at 8 warps 3.9's padded sm_90 build spilled 8 B), the second
# runs 8 warps, as its padded variant already did (so that one needs no _PADDED_TILES entry now).
_TILES = {
    "16bit": {"fwd": {16: (64, 64, 4, 2), 32: (64, 64, 4, 2), 64: (64, 64, 4, 2), 128: (64, 32, 4, 2)},
              "dkdv": {16: (32, 64, 4, 2), 32: (32, 64, 4, 2), 64: (32, 32, 4, 2), 128: (32, 32, 4, 2)},
              "dq": {16: (64, 32, 4, 2), 32: (64, 32, 4, 2), 64: (64, 32, 4, 2), 128: (64, 32, 8, 2)}},
    "tf32": {"fwd": {16: (64, 32, 4, 2), 32: (64, 32, 4, 2), 64: (64, 32, 8, 2), 128: (64, 32, 8, 2)},
             "dkdv": {16: (32, 64, 4, 2), 32: (32, 64, 4, 2), 64: (32, 32, 4, 2), 128: (32, 32, 4, 2)},
             "dq": {16: (64, 32, 4, 2), 32: (64, 32, 4, 2), 64: (32, 32, 4, 2), 128: (32, 16, 8, 2)}},
    "tf32x3": {"fwd": {16: (64, 32, 4, 2), 32: (64, 32, 4, 2), 64: (64, 32, 4, 2), 128: (16, 32, 4, 2)},
               "dkdv": {16: (32, 64, 4, 2), 32: (32, 16, 4, 2), 64: (32, 16, 4, 2), 128: (16, 16, 8, 2)},
               "dq": {16: (64, 16, 4, 2), 32: (32, 16, 4, 1), 64: (32, 16, 4, 2), 128: (16, 16, 4, 1)}},
}
# tl.dot needs M >= 16. One query (the last layer computes only the position the loss reads) or
# a handful (modular arithmetic, L = 4..7) would waste most of a 64-row block: fwd and dq use 16
# rows and 4 warps for Lq <= 16 (TF32x3 dq also single-buffers there, to stay spill-free).
_SMALL_LQ = 16
# ... with fewer keys per step where 16 rows at the big tile's BLOCK_N spilled 8 B (Triton 3.6, sm_80, once
# the interleaved layout's offsets were in: scripts/attention_rows_check.py)
_SMALL_BLOCK_N = {("tf32", "fwd", 128): 16, ("16bit", "dq", 16): 16}
# Padded head sizes (D < BLOCK_D) where the tile above spills (the runtime row stride and the
# per-lane masks cost registers): (mode, kernel, BLOCK_D, Lq <= 16) -> (BLOCK_M, BLOCK_N,
# num_warps, num_stages), each spill-free on sm_80 and sm_90 under Triton 3.6 and 3.9
# (compile_specs). The last five are for Triton 3.6, whose sm_80 builds of the tiles above spilled
# where 3.9's did not: TF32x3 fwd BLOCK_D 64, Lq <= 16 (16, 32, 4 warps) 16 B (at 8 warps 3.6
# spilled 16 B, single-buffered 3.9 spilled 24 B: BLOCK_N 16 instead); TF32 fwd 128 (64, 32, 8
# warps) 16 B (16 warps spill on both: BLOCK_N 16 instead); TF32 dq 128, Lq <= 16 (16, 32, 4 warps)
# 16 B; 16-bit fwd 128 (64, 32, 4 warps) 56 B and dq 128 48 B (single-buffered the same).
_PADDED_TILES = {
    ("tf32x3", "fwd", 64, False): (64, 16, 4, 2),
    ("tf32", "dkdv", 128, False): (32, 32, 8, 2),
    ("16bit", "dkdv", 128, False): (32, 32, 8, 2),
    ("tf32x3", "fwd", 64, True): (16, 16, 4, 2),
    ("tf32", "fwd", 128, False): (64, 16, 8, 2),
    ("tf32", "dq", 128, True): (16, 32, 8, 2),
    ("16bit", "fwd", 128, False): (64, 32, 8, 2),
    ("16bit", "dq", 128, False): (64, 32, 8, 2),
    ("tf32", "dq", 128, False): (32, 16, 4, 2),  # the even head's 8 warps spilled 8 B here (3.9, sm_80)
    ("tf32x3", "dq", 32, False): (16, 16, 4, 1),
}
# The fused backward of one query block ("dqkv", Lq <= 16: dQ's kernel also writing dK and dV) runs dQ's small
# tile except where that spilled 8-16 B (Triton 3.6 or 3.9, sm_80 or sm_90, some row layout):
# (mode, BLOCK_D, even) -> (BLOCK_M = 16, BLOCK_N, num_warps, num_stages), each spill-free under both.
_DQKV_TILES = {
    ("tf32x3", 32, True): (16, 16, 8, 2), ("tf32x3", 32, False): (16, 16, 4, 2),
    ("tf32x3", 64, True): (16, 16, 8, 2), ("tf32x3", 64, False): (16, 16, 4, 2),
    ("16bit", 32, True): (16, 16, 4, 2), ("16bit", 128, True): (16, 32, 8, 2),
}
# Since dq also computes delta (one more tile of O loaded before its loop), three of its tiles spilled 8-16 B
# and moved (Triton 3.6 and 3.9, sm_80/sm_90, every row layout): 16-bit dq BLOCK_D 128 to 8 warps, 16-bit dq
# BLOCK_D 16 with Lq <= 16 to 16 keys per step (_SMALL_BLOCK_N), padded TF32x3 dq BLOCK_D 32 to 16 rows.


def _mode(dtype: torch.dtype, precision: str) -> str:
    return precision if dtype == torch.float32 else "16bit"


def _block_d(d: int) -> int:
    """The head size padded to a power of two, at least 16 (tl.dot's smallest K)."""
    return max(16, triton.next_power_of_2(d))


def _block_config(kernel: str, block_d: int, even_d: bool, mode: str, lq: int) -> dict:
    """Launch configuration of one kernel ("fwd", "dkdv", "dq"; "dqkv" is dq's for Lq <= 16, unless
    ``_DQKV_TILES`` says otherwise): a rule, not autotuning."""
    if kernel == "dqkv":
        tile = _DQKV_TILES.get((mode, block_d, even_d))
        if tile is not None:
            return dict(zip(("BLOCK_M", "BLOCK_N", "num_warps", "num_stages"), tile))
        kernel = "dq"
    small = kernel != "dkdv" and lq <= _SMALL_LQ
    padded = None if even_d else _PADDED_TILES.get((mode, kernel, block_d, small))
    if padded is not None:
        block_m, block_n, warps, stages = padded
    else:
        block_m, block_n, warps, stages = _TILES[mode][kernel][block_d]
        if small:
            block_m, warps = 16, 4
            stages = 1 if (mode, kernel) == ("tf32x3", "dq") else stages
            block_n = _SMALL_BLOCK_N.get((mode, kernel, block_d), block_n)
    return dict(BLOCK_M=block_m, BLOCK_N=block_n, num_warps=warps, num_stages=stages)


def _launch(kind: str, grid, *args, d: int, lq: int, dtype: torch.dtype, precision: str,
            rows: tuple[int, int]) -> None:
    block_d = _block_d(d)
    cfg = _block_config(kind, block_d, d == block_d, _mode(dtype, precision), lq)
    _KERNELS[kind][grid(cfg)](*args, BLOCK_D=block_d, EVEN_D=d == block_d, Q_ROW=rows[0], KV_ROW=rows[1],
                              DOT_PRECISION=precision, UPCAST=INTERPRET and dtype == torch.bfloat16,
                              **_kind_constexprs(kind), **cfg, **pdl(args[0]))


def _kind_constexprs(kind: str) -> dict:
    """The constexprs that tell a kernel's launches apart: dQ alone, or dQ, dK and dV ("dqkv")."""
    return {"DKDV": kind == "dqkv"} if kind in ("dq", "dqkv") else {}


_KERNELS = {"fwd": _attn_fwd, "dkdv": _attn_bwd_dkdv, "dq": _attn_bwd_dq, "dqkv": _attn_bwd_dq}


# ----------------------------------------------------------------------------------------------
# Host side.
# ----------------------------------------------------------------------------------------------


class _Layout:
    """Where a side's tensors (q, o, do, dq or k, v, dk, dv) keep element (b, h, l, d): at
    ``b * sb + h * sh + l * row + d``. Two layouts are read in place: contiguous (B, H, L, D), and the
    heads interleaved in the rows, contiguous (B, L, H, D) -- a model's projection (B, L, H * D) viewed as
    heads, which then needs no copy either way. A padded head (D < BLOCK_D) is always contiguous."""

    def __init__(self, t: torch.Tensor):
        B, H, L, D = t.shape
        even = D == _block_d(D)
        self.interleaved = even and L > 1 and not t.is_contiguous() and t.transpose(1, 2).is_contiguous()
        self.sb, self.sh, self.row = (L * H * D, D, H * D) if self.interleaved else (H * L * D, L * D, D)
        if not even:
            self.row = 0  # the kernels use the runtime D (see _row_strides)

    def adopt(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` in this layout: as it is when it already is, else copied."""
        if not self.interleaved:
            return t.contiguous()
        return t if t.transpose(1, 2).is_contiguous() else t.transpose(1, 2).contiguous().transpose(1, 2)


class _Attention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, key_padding_mask, causal, sm_scale):
        qs, ks = _Layout(q), _Layout(k)
        q, k, v = qs.adopt(q), ks.adopt(k), ks.adopt(v)
        B, H, Lq, D = q.shape
        Lk = k.shape[2]
        if key_padding_mask is None:
            # Any uint8 pointer will do: with mask_len = 0 every load from it is masked off.
            # Passing the same pointer type either way keeps one compiled variant.
            mask, mask_len = q.view(torch.uint8), 0
        else:
            mask, mask_len = key_padding_mask.contiguous().view(torch.uint8), Lk
        shift = (Lk - Lq) if causal else Lk
        precision = _dot_precision(q.dtype)

        o = torch.empty_like(q)  # (empty_like keeps a dense tensor's strides: q's layout)
        lse = torch.empty((B, H, Lq), device=q.device, dtype=torch.float32)
        strides = (qs.sb, qs.sh, ks.sb, ks.sh)
        _launch("fwd", lambda c: (B * H, triton.cdiv(Lq, c["BLOCK_M"])),
                q, k, v, mask, o, lse, H, Lq, Lk, D, *strides, shift, mask_len, sm_scale * _LOG2E,
                d=D, lq=Lq, dtype=q.dtype, precision=precision, rows=(qs.row, ks.row))

        ctx.save_for_backward(q, k, v, o, lse, mask)
        ctx.args = (shift, mask_len, sm_scale, precision, qs, ks)
        return o

    @staticmethod
    @once_differentiable
    def backward(ctx, do):
        q, k, v, o, lse, mask = ctx.saved_tensors
        shift, mask_len, sm_scale, precision, qs, ks = ctx.args
        B, H, Lq, D = q.shape
        Lk = k.shape[2]
        do = qs.adopt(do)

        delta = torch.empty_like(lse)
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        common = (H, Lq, Lk, D, qs.sb, qs.sh, ks.sb, ks.sh, shift, mask_len, sm_scale * _LOG2E, sm_scale)
        config = dict(d=D, lq=Lq, dtype=q.dtype, precision=precision, rows=(qs.row, ks.row))
        if Lq <= _SMALL_LQ:  # one block holds every query of a (batch, head): one launch writes all three
            _launch("dqkv", lambda c: (B * H, 1), q, k, v, mask, do, o, lse, delta, dq, dk, dv, *common, **config)
            return dq, dk, dv, None, None, None
        # dQ first: its programs own the query rows, so they also write delta, which dK/dV then reads
        _launch("dq", lambda c: (B * H, triton.cdiv(Lq, c["BLOCK_M"])),
                q, k, v, mask, do, o, lse, delta, dq, dk, dv, *common, **config)
        _launch("dkdv", lambda c: (B * H, triton.cdiv(Lk, c["BLOCK_N"])),
                q, k, v, mask, do, lse, delta, dk, dv, *common, **config)
        return dq, dk, dv, None, None, None


def _validate(q, k, v, key_padding_mask) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name} must have shape (B, H, L, D); got {tuple(t.shape)}")
        check_dtype(name, t, SUPPORTED_DTYPES)
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v must share one dtype; got {q.dtype}, {k.dtype}, {v.dtype}")
    B, H, Lq, D = q.shape
    if k.shape != v.shape or k.shape[:2] != (B, H) or k.shape[3] != D:
        raise ValueError(f"expected q (B, H, Lq, D) and k, v (B, H, Lk, D); got q {tuple(q.shape)}, "
                         f"k {tuple(k.shape)}, v {tuple(v.shape)}")
    if not 1 <= D <= MAX_HEAD_DIM:
        raise ValueError(f"head dim D={D} is not supported; supported: 1 to {MAX_HEAD_DIM}")
    if B * H > _MAX_GRID_X:
        raise ValueError(f"B*H = {B * H} is not supported; supported: up to {_MAX_GRID_X} (CUDA's grid limit)")
    Lk = k.shape[2]
    for name, n in (("Lq", Lq), ("Lk", Lk)):
        if not 1 <= n <= MAX_LEN:
            raise ValueError(f"{name}={n} is not supported; supported: 1 to {MAX_LEN}")
    if key_padding_mask is not None:
        if not isinstance(key_padding_mask, torch.Tensor) or key_padding_mask.dtype != torch.bool:
            raise ValueError("key_padding_mask must be a bool tensor of shape (B, Lk), True where the key "
                             "takes part")
        if tuple(key_padding_mask.shape) != (B, Lk):
            raise ValueError(f"key_padding_mask must have shape (B, Lk) = {(B, Lk)}; "
                             f"got {tuple(key_padding_mask.shape)}")


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              key_padding_mask: torch.Tensor | None = None, causal: bool = False,
              sm_scale: float | None = None) -> torch.Tensor:
    """softmax(q k^T * sm_scale, masked) v for q (B, H, Lq, D), k and v (B, H, Lk, D).

    key_padding_mask: bool (B, Lk), True where the key takes part (SDPA / Hugging Face
    convention). causal: query i sees keys j <= i + Lk - Lq. sm_scale defaults to 1/sqrt(D).
    A query with no visible key gets zeros. fp32 / bf16 / fp16, D from 1 to 128 (padded inside
    the kernels to a power of two), Lq and Lk from 1 to 1024, B*H up to 2**31 - 1. CUDA tensors
    run the Triton kernels; CPU tensors run ``attention_reference`` (or the kernels under
    ``TRITON_INTERPRET=1``).
    """
    _validate(q, k, v, key_padding_mask)
    tensors = (q, k, v) if key_padding_mask is None else (q, k, v, key_padding_mask)
    triton_path = use_triton(*tensors)  # raises ValueError on an unsupported or mixed device
    sm_scale = 1.0 / math.sqrt(q.shape[-1]) if sm_scale is None else float(sm_scale)
    if not triton_path or q.shape[0] * q.shape[1] == 0:  # nothing to launch for an empty batch
        return attention_reference(q, k, v, key_padding_mask, causal, sm_scale)
    return _Attention.apply(q, k, v, key_padding_mask, bool(causal), sm_scale)


# ----------------------------------------------------------------------------------------------
# Shipped configurations, for ahead-of-time compilation (kernels._compile).
# ----------------------------------------------------------------------------------------------

_STRIDES = ("q_sb", "q_sh", "kv_sb", "kv_sh")
_ARGS = {
    "fwd": ("Q", "K", "V", "Mask", "O", "LSE", "H", "Lq", "Lk", "D", *_STRIDES, "shift", "mask_len", "qk_scale"),
    "dkdv": ("Q", "K", "V", "Mask", "DO", "LSE", "Delta", "DK", "DV",
             "H", "Lq", "Lk", "D", *_STRIDES, "shift", "mask_len", "qk_scale", "sm_scale"),
    "dq": ("Q", "K", "V", "Mask", "DO", "O", "LSE", "Delta", "DQ", "DK", "DV",
           "H", "Lq", "Lk", "D", *_STRIDES, "shift", "mask_len", "qk_scale", "sm_scale"),
}
_ARGS["dqkv"] = _ARGS["dq"]
# Triton types of the arguments that are not pointers of the input dtype.
_ARG_TYPES = {"Mask": "*u8", "LSE": "*fp32", "Delta": "*fp32", "H": "i32", "Lq": "i32", "Lk": "i32",
              "D": "i32", "shift": "i32", "mask_len": "i32", "qk_scale": "fp32", "sm_scale": "fp32",
              **{name: "i32" for name in _STRIDES}}


def _spec_rows(block_d: int, even_d: bool) -> dict:
    """The row-stride constexprs a spec is compiled with. A padded head's are unused (0). An even
    head's are a number in the address arithmetic, so one value stands for all: the interleaved layout
    of 4 heads, the paper's models'. scripts/attention_rows_check.py compiles every even spec at the
    contiguous layout's value and a readout row's too, and finds them spill-free under Triton 3.6 and
    3.9 (ptxas may use a few registers more or fewer)."""
    row = 4 * block_d if even_d else 0
    return {"Q_ROW": row, "KV_ROW": row}


def compile_specs() -> list:
    """One CompileSpec per kernel per shipped configuration: BLOCK_D x padded or not (EVEN_D) x
    dtype (fp32 in both of its precisions, "tf32x3" and "tf32") x, for the kernels that own query
    rows (fwd, dq), both BLOCK_M classes of ``_block_config`` (Lq <= 16 and Lq > 16) where they
    differ. D itself is a runtime i32, so a padded spec covers every head size that pads to its
    BLOCK_D (D = 33..63 for BLOCK_D = 64)."""
    from ._compile import SIGNATURE_DTYPES, CompileSpec

    specs = []
    for block_d in _BLOCK_DS:
        for even_d in (True, False):
            shape = f"BLOCK_D={block_d}" + ("" if even_d else ",padded")
            for dtype in SUPPORTED_DTYPES:
                t = SIGNATURE_DTYPES[dtype]
                for prec in (("tf32x3", "tf32") if dtype == torch.float32 else ("tf32",)):
                    label = f"{t}-{prec}" if dtype == torch.float32 else t
                    for kind, fn in _KERNELS.items():
                        seen = []
                        for lq in ((1,) if kind == "dqkv" else (1, _SMALL_LQ + 1)):
                            cfg = _block_config(kind, block_d, even_d, _mode(dtype, prec), lq)
                            if cfg in seen:
                                continue
                            seen.append(cfg)
                            specs.append(_kernel_spec(CompileSpec, kind, fn, shape, t, label, prec,
                                                      block_d, even_d, cfg))
    return specs


def _kernel_spec(CompileSpec, kind, fn, shape, t, label, prec, block_d, even_d, cfg):
    blocks = {"BLOCK_M": cfg["BLOCK_M"], "BLOCK_N": cfg["BLOCK_N"]}
    constexprs = {"BLOCK_D": block_d, "EVEN_D": even_d, **_spec_rows(block_d, even_d), "DOT_PRECISION": prec,
                  "UPCAST": False, **_kind_constexprs(kind), **blocks}
    signature = {a: _ARG_TYPES.get(a, f"*{t}") for a in _ARGS[kind]}
    signature.update({c: "constexpr" for c in constexprs})
    return CompileSpec(
        name=(f"attn_{kind}[{shape},{label},BLOCK_M={blocks['BLOCK_M']},BLOCK_N={blocks['BLOCK_N']},"
              f"warps={cfg['num_warps']},stages={cfg['num_stages']}]"),
        fn=fn, signature=signature, constexprs=constexprs,
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"], tensor_cores=True)
