"""One query's attention over a sequence, without projecting its keys or values: one launch each way.

The last layer of the paper's models reads one row per sequence (the readout), so its attention has one query.
Its scores and its output are linear in the layer's input x, and per head h the key and value projections
move to the query's side:

    q·k_j = q·(Wk x_j + bk) = (Wkᵀ q)·x_j + q·bk
    Σ_j p_j v_j = Wv (Σ_j p_j x_j) + bv                  (Σ_j p_j = 1)

so no key or value is made. Projected, keys and values cost 2·L·C² multiply-adds per sequence forward and
twice that backward (IMDB: 1.07 G forward for the batch); this costs ~2·L·C·H (H heads), and x is read once
each way instead of keys and values being written and read back.

Forward, one program per sequence n (``readout_attention_forward``):
  1. q = Wq x[row] + bq, scaled by 1/√D; per head the query in x's space, q_in[h] = Σ_{o in h} q[o] Wk[o] (H, C),
     and q·bk per head -- the weights read in chunks of BLOCK_O rows, a head one-hot matrix (H_PAD, BLOCK_O)
     gathering each chunk's rows into their head's (a product);
  2. the scores q_in xᵀ + q·bk over x's rows in blocks of BLOCK_L, online softmax, and the mix Σ p_j x_j (H, C);
  3. out = Wv mixed[head(o)] + bv per output o (a sequence whose mask has no key at all gets 0, as
     ``kernels.attention``'s query without keys).
Saved for the backward: q (scaled), q_in, mixed, and lse minus q·bk (so that p = exp(q_in·x_j - lse) needs no bias).

Backward, one program per sequence (``readout_attention_backward``), given dout (the output's gradient) and drow
(the residual's gradient at the query's row, if any): d_mixed[h] = Σ_{o in h} dout[o] Wv[o]; over x's blocks it
recomputes p, forms dp = d_mixed xᵀ, ds = p (dp - d_mixed·mixed), sums d_q_in = ds x and d(q·bk) = Σ ds, and
writes dx = pᵀ d_mixed + dsᵀ q_in; then dq = (Wk d_q_in[head] + d(q·bk) bk) / √D and x's row gets dq Wq + drow
on top. The weight gradients are left to ``kernels.linear_weight_grads`` (nothing in the backward waits for
them), for which the kernels write each as a plain linear layer's ``(x, dy)`` pair over (N·H) rows whose dy is
zero outside the row's head:
    Wq, bq: (x[row], dq)     Wk: (d_q_in, q⊙head)     bk: Σ (q⊙head)·d(q·bk)     Wv, bv: (mixed, dout⊙head)
(``Grads``: ``q_heads``, ``bk_rows`` and ``dout_heads`` are those head-expanded rows). bk's exact gradient is zero
(softmax ignores a shift shared by every key); what the rounding leaves is what the projected keys give it.

x is float32 (another dtype is cast on the host; under bf16 autocast the readout's attention is a sliver of the
step and runs in fp32); weights (C, C) with biases (C,), or a pack's (R, C, C) and (R, C) with x's sequences
run by run. Its products are exact fp32 on the CUDA cores (``_PRECISION``), whatever PyTorch's TF32 switch:
the work is small, and the split operands of tf32x3 spilled registers. For C up to ``MAX_C`` and H up to
``MAX_HEADS``; ``fits`` says whether a layer should use it (long sequences: each program reads the weights). CUDA tensors run Triton; CPU tensors the reference
(or Triton under ``TRITON_INTERPRET=1``).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from ._compile import CompileSpec
from ._dispatch import use_triton
from ._pdl import enter, pdl

MAX_C = 128  # (256 spilled at every tile tried, backward)
MAX_HEADS = 16
MIN_KEYS = 32  # see fits
_H_PAD = 16  # the heads padded to tl.dot's smallest M
_BLOCK_O = 16  # weight rows per chunk
# Exact fp32 products ("ieee", on the CUDA cores): the work is ~2·L·C·H_PAD multiply-adds a sequence each way, and
# TF32x3's split operands spilled the backward at every tile tried for C = 128 (Triton 3.9, sm_80 and sm_90).
_PRECISION = "ieee"
# direction -> BLOCK_C -> (BLOCK_L, warps): the x tile and the warps, picked spill-free for sm_80 and sm_90 under
# Triton 3.6 and 3.9 (kernels._compile); the backward holds three (H_PAD, BLOCK_C) tiles across its loop
_TILES = {"fwd": {16: (32, 4), 32: (32, 8), 64: (32, 4), 128: (32, 8)},
          "bwd": {16: (32, 8), 32: (16, 8), 64: (32, 8), 128: (16, 8)}}


class Saved(NamedTuple):
    """The forward's results: ``out`` (N, C), and what the backward reads -- ``q`` (N, C) the query scaled by
    1/√D, ``q_in`` (N, H, C), ``mixed`` (N, H, C) and ``lse`` (N, H), the log-sum-exp of the scores minus q·bk
    (+inf for a sequence with no key)."""
    out: torch.Tensor
    q: torch.Tensor
    q_in: torch.Tensor
    mixed: torch.Tensor
    lse: torch.Tensor


class Grads(NamedTuple):
    """The backward's results: ``dx`` like x, ``dq`` (N, C) the unscaled query's gradient, and the rows of the
    weight gradients (module docstring): ``d_q_in``, ``q_heads``, ``bk_rows``, ``dout_heads``, each (N, H, C)."""
    dx: torch.Tensor
    dq: torch.Tensor
    d_q_in: torch.Tensor
    q_heads: torch.Tensor
    bk_rows: torch.Tensor
    dout_heads: torch.Tensor


def fits(hidden: int, heads: int, keys: int) -> bool:
    """Whether a layer of this width and head count, over this many keys, should run here rather than project
    keys and values: up to ``MAX_C`` wide and ``MAX_HEADS`` heads, and at least ``MIN_KEYS`` keys. Each program
    reads the three (C, C) weights, 3·C² floats, for its one sequence; the projections cost 2·L·C² multiply-adds a
    sequence on the tensor cores, with the weights shared by every row. By H100 datasheet rates (L2 ~8 TB/s,
    tf32x3 ~130 TFLOP/s) the two cross near L = 50: IMDB's 256 keys are well past it, the modular task's 6 are
    far below (its step would read ~100 MB of weights where it projects 0.2 GFLOP). A rule, not measured."""
    return hidden <= MAX_C and heads <= MAX_HEADS and hidden % heads == 0 and keys >= MIN_KEYS


# ----------------------------------------------------------------------------------------------
# Kernels.
# ----------------------------------------------------------------------------------------------


@triton.jit
def _program(per_run, w_rs, b_rs):
    """This program's sequence n, and where its run's weights and biases start (a pack's run r: n // per_run)."""
    n = tl.program_id(0).to(tl.int64)
    run = n // per_run
    return n, run * w_rs, run * b_rs


@triton.jit
def _weights(W, o, o_ok, cols, c_ok, C):
    """Rows o of a (C, C) weight, (BLOCK_O, BLOCK_C), zeros outside."""
    return tl.load(W + o[:, None] * C + cols[None, :], mask=o_ok[:, None] & c_ok[None, :], other=0.0)


@triton.jit
def _keys(MASK, n, pos, p_ok, mask_len):
    """Which of the positions take part: real ones, and where there is a mask (mask_len > 0) its True ones."""
    m = tl.load(MASK + n * mask_len + pos, mask=p_ok & (pos < mask_len), other=1)
    return p_ok & (m != 0)


@triton.jit
def _readout_fwd(X, MASK, WQ, BQ, WK, BK, WV, BV, OUT, Q, QIN, MIXED, LSE,
                 L, C, D, H, row, per_run, x_ns, x_ls, w_rs, b_rs, mask_len, scale,
                 BLOCK_C: tl.constexpr, BLOCK_O: tl.constexpr, H_PAD: tl.constexpr, BLOCK_L: tl.constexpr,
                 DOT_PRECISION: tl.constexpr, PDL: tl.constexpr = False):
    enter(PDL)
    n, w_off, b_off = _program(per_run, w_rs, b_rs)
    WQ, WK, WV, BQ, BK, BV = WQ + w_off, WK + w_off, WV + w_off, BQ + b_off, BK + b_off, BV + b_off
    cols = tl.arange(0, BLOCK_C)
    c_ok = cols < C
    heads = tl.arange(0, H_PAD)
    h_ok = heads < H
    orow = tl.arange(0, BLOCK_O)
    X += n * x_ns

    # 1. the query, and per head the query in x's space and q·bk
    x_row = tl.load(X + row * x_ls + cols, mask=c_ok, other=0.0)
    q_in = tl.zeros([H_PAD, BLOCK_C], dtype=tl.float32)
    q_bk = tl.zeros([H_PAD], dtype=tl.float32)
    for o0 in range(0, C, BLOCK_O):
        o = o0 + orow
        o_ok = o < C
        q = (tl.sum(_weights(WQ, o, o_ok, cols, c_ok, C) * x_row[None, :], 1)
             + tl.load(BQ + o, mask=o_ok, other=0.0)) * scale
        tl.store(Q + n * C + o, q, mask=o_ok)
        in_head = ((o // D)[None, :] == heads[:, None]) & o_ok[None, :]  # (H_PAD, BLOCK_O)
        q_in = tl.dot(in_head.to(tl.float32), q[:, None] * _weights(WK, o, o_ok, cols, c_ok, C), q_in,
                      input_precision=DOT_PRECISION)
        q_bk += tl.sum(tl.where(in_head, (q * tl.load(BK + o, mask=o_ok, other=0.0))[None, :], 0.0), 1)
    hc = heads[:, None] * C + cols[None, :]
    hc_ok = h_ok[:, None] & c_ok[None, :]
    tl.store(QIN + n * H * C + hc, q_in, mask=hc_ok)

    # 2. scores, online softmax, and the mix of x's rows
    m = tl.full([H_PAD], float("-inf"), dtype=tl.float32)
    s_sum = tl.zeros([H_PAD], dtype=tl.float32)
    mixed = tl.zeros([H_PAD, BLOCK_C], dtype=tl.float32)
    for l0 in range(0, L, BLOCK_L):
        pos = l0 + tl.arange(0, BLOCK_L)
        p_ok = pos < L
        xt = tl.load(X + pos[:, None] * x_ls + cols[None, :], mask=p_ok[:, None] & c_ok[None, :], other=0.0)
        s = tl.dot(q_in, tl.trans(xt), input_precision=DOT_PRECISION) + q_bk[:, None]
        s = tl.where(_keys(MASK, n, pos, p_ok, mask_len)[None, :], s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # no key yet: exp(-inf) = 0, never -inf - -inf
        alpha = tl.exp(m - m_safe)
        p = tl.exp(s - m_safe[:, None])
        s_sum = s_sum * alpha + tl.sum(p, 1)
        mixed = tl.dot(p, xt, mixed * alpha[:, None], input_precision=DOT_PRECISION)
        m = m_new
    seen = s_sum > 0
    mixed = mixed * tl.where(seen, 1.0 / tl.where(seen, s_sum, 1.0), 0.0)[:, None]
    tl.store(MIXED + n * H * C + hc, mixed, mask=hc_ok)
    lse = tl.where(seen, m + tl.log(tl.where(seen, s_sum, 1.0)) - q_bk, float("inf"))
    tl.store(LSE + n * H + heads, lse, mask=h_ok)

    # 3. the value projection of each head's mix
    for o0 in range(0, C, BLOCK_O):
        o = o0 + orow
        o_ok = o < C
        head_of = (o // D)[:, None] == heads[None, :]  # (BLOCK_O, H_PAD)
        rows = tl.dot(head_of.to(tl.float32), mixed, input_precision=DOT_PRECISION)  # mixed[head(o)]
        out = tl.sum(_weights(WV, o, o_ok, cols, c_ok, C) * rows, 1) + tl.load(BV + o, mask=o_ok, other=0.0)
        seen_o = tl.sum(tl.where(head_of & seen[None, :], 1, 0), 1) > 0
        tl.store(OUT + n * C + o, tl.where(seen_o, out, 0.0), mask=o_ok)


@triton.jit
def _readout_bwd(X, MASK, WQ, WK, BK, WV, DOUT, DROW, Q, QIN, MIXED, LSE,
                 DX, DQ, DQIN, QHEADS, BKROWS, DOUTHEADS,
                 L, C, D, H, row, per_run, x_ns, x_ls, w_rs, b_rs, mask_len, scale, drow_ns, has_drow,
                 BLOCK_C: tl.constexpr, BLOCK_O: tl.constexpr, H_PAD: tl.constexpr, BLOCK_L: tl.constexpr,
                 DOT_PRECISION: tl.constexpr, PDL: tl.constexpr = False):
    enter(PDL)
    n, w_off, b_off = _program(per_run, w_rs, b_rs)
    WQ, WK, WV, BK = WQ + w_off, WK + w_off, WV + w_off, BK + b_off
    cols = tl.arange(0, BLOCK_C)
    c_ok = cols < C
    heads = tl.arange(0, H_PAD)
    h_ok = heads < H
    orow = tl.arange(0, BLOCK_O)
    hc = n * H * C + heads[:, None] * C + cols[None, :]
    hc_ok = h_ok[:, None] & c_ok[None, :]
    X += n * x_ns
    DX += n * x_ns

    lse = tl.load(LSE + n * H + heads, mask=h_ok, other=float("inf"))  # padded heads: p = 0
    seen = lse < float("inf")
    q_in = tl.load(QIN + hc, mask=hc_ok, other=0.0)
    mixed = tl.load(MIXED + hc, mask=hc_ok, other=0.0)

    # the output's gradient: through Wv into each head's mix, and as v's gradient rows
    d_mixed = tl.zeros([H_PAD, BLOCK_C], dtype=tl.float32)
    for o0 in range(0, C, BLOCK_O):
        o = o0 + orow
        o_ok = o < C
        in_head = ((o // D)[None, :] == heads[:, None]) & o_ok[None, :]  # (H_PAD, BLOCK_O)
        seen_o = tl.sum(tl.where(in_head & seen[:, None], 1, 0), 0) > 0
        dy = tl.where(seen_o, tl.load(DOUT + n * C + o, mask=o_ok, other=0.0), 0.0)
        dy_heads = tl.where(in_head, dy[None, :], 0.0)
        out_hc = n * H * C + heads[:, None] * C + o[None, :]
        tl.store(DOUTHEADS + out_hc, dy_heads, mask=h_ok[:, None] & o_ok[None, :])
        d_mixed = tl.dot(dy_heads, _weights(WV, o, o_ok, cols, c_ok, C), d_mixed, input_precision=DOT_PRECISION)
    delta = tl.sum(d_mixed * mixed, 1)  # Σ_j p_j dp_j, in closed form

    # over x's rows: p again, the scores' gradient, x's gradient (its query row's last)
    d_q_in = tl.zeros([H_PAD, BLOCK_C], dtype=tl.float32)
    d_qbk = tl.zeros([H_PAD], dtype=tl.float32)
    p_row = tl.zeros([H_PAD], dtype=tl.float32)
    ds_row = tl.zeros([H_PAD], dtype=tl.float32)
    for l0 in range(0, L, BLOCK_L):
        pos = l0 + tl.arange(0, BLOCK_L)
        p_ok = pos < L
        xt = tl.load(X + pos[:, None] * x_ls + cols[None, :], mask=p_ok[:, None] & c_ok[None, :], other=0.0)
        s = tl.dot(q_in, tl.trans(xt), input_precision=DOT_PRECISION)
        p = tl.where(_keys(MASK, n, pos, p_ok, mask_len)[None, :], tl.exp(s - lse[:, None]), 0.0)
        dp = tl.dot(d_mixed, tl.trans(xt), input_precision=DOT_PRECISION)
        ds = p * (dp - delta[:, None])
        d_q_in = tl.dot(ds, xt, d_q_in, input_precision=DOT_PRECISION)
        d_qbk += tl.sum(ds, 1)
        dxt = tl.dot(tl.trans(ds), q_in, tl.dot(tl.trans(p), d_mixed, input_precision=DOT_PRECISION),
                     input_precision=DOT_PRECISION)
        at_row = pos == row
        tl.store(DX + pos[:, None] * x_ls + cols[None, :], dxt, mask=(p_ok & (pos != row))[:, None] & c_ok[None, :])
        p_row += tl.sum(tl.where(at_row[None, :], p, 0.0), 1)
        ds_row += tl.sum(tl.where(at_row[None, :], ds, 0.0), 1)
    tl.store(DQIN + hc, d_q_in, mask=hc_ok)
    dx_row = tl.sum(p_row[:, None] * d_mixed + ds_row[:, None] * q_in, 0)

    # the query's gradient, k's gradient rows, and the query projection's share of x's row
    for o0 in range(0, C, BLOCK_O):
        o = o0 + orow
        o_ok = o < C
        head_of = (o // D)[:, None] == heads[None, :]  # (BLOCK_O, H_PAD)
        rows = tl.dot(head_of.to(tl.float32), d_q_in, input_precision=DOT_PRECISION)  # d_q_in[head(o)]
        dqbk_o = tl.sum(tl.where(head_of, d_qbk[None, :], 0.0), 1)
        dq = (tl.sum(_weights(WK, o, o_ok, cols, c_ok, C) * rows, 1)
              + dqbk_o * tl.load(BK + o, mask=o_ok, other=0.0)) * scale
        tl.store(DQ + n * C + o, dq, mask=o_ok)
        q = tl.load(Q + n * C + o, mask=o_ok, other=0.0)
        in_head = ((o // D)[None, :] == heads[:, None]) & o_ok[None, :]
        q_heads = tl.where(in_head, q[None, :], 0.0)
        out_hc = n * H * C + heads[:, None] * C + o[None, :]
        tl.store(QHEADS + out_hc, q_heads, mask=h_ok[:, None] & o_ok[None, :])
        tl.store(BKROWS + out_hc, q_heads * d_qbk[:, None], mask=h_ok[:, None] & o_ok[None, :])
        dx_row += tl.sum(dq[:, None] * _weights(WQ, o, o_ok, cols, c_ok, C), 0)
    dx_row += tl.load(DROW + n * drow_ns + cols, mask=c_ok & (cols < has_drow * C), other=0.0)
    tl.store(DX + row * x_ls + cols, dx_row, mask=c_ok)


# ----------------------------------------------------------------------------------------------
# References: the same quantities in PyTorch ops (the CPU path, and the spec the kernels are tested against).
# ----------------------------------------------------------------------------------------------


def _heads_of(t: torch.Tensor, heads: int) -> torch.Tensor:
    """(N, C) -> (N, H, C): row h keeps head h's D entries, zeros elsewhere."""
    N, C = t.shape
    eye = torch.eye(heads, dtype=t.dtype, device=t.device)
    return (t.view(N, 1, heads, C // heads) * eye[None, :, :, None]).reshape(N, heads, C)


def _per_seq(n: int, runs: bool, *ts: torch.Tensor) -> list[torch.Tensor]:
    """Each weight or bias once per sequence, (N, ...): a pack's run r over its N/R sequences."""
    return [t.repeat_interleave(n // t.shape[0], 0) if runs else t.expand(n, *t.shape) for t in ts]


def readout_attention_forward_reference(x, row, wq, bq, wk, bk, wv, bv, heads, mask=None) -> Saved:
    """``readout_attention_forward`` in PyTorch ops, in x's dtype."""
    N, L, C = x.shape
    D = C // heads
    wq, bq, wk, bk, wv, bv = _per_seq(N, wq.dim() == 3, wq, bq, wk, bk, wv, bv)
    q = (torch.einsum("noc,nc->no", wq, x[:, row]) + bq) * D ** -0.5
    q_in = torch.einsum("nho,noc->nhc", _heads_of(q, heads), wk)
    q_bk = (q * bk).view(N, heads, D).sum(-1)
    s = torch.einsum("nhc,nlc->nhl", q_in, x) + q_bk[..., None]
    keys = torch.ones(N, L, dtype=torch.bool, device=x.device) if mask is None else mask
    s = s.masked_fill(~keys[:, None, :], float("-inf"))
    seen = keys.any(-1)[:, None]  # (N, 1): a sequence with a key at all
    lse = s.logsumexp(-1, keepdim=True)
    p = torch.where(seen[..., None], (s - lse).exp(), 0.0)
    lse = torch.where(seen, lse.squeeze(-1) - q_bk, float("inf"))
    mixed = torch.einsum("nhl,nlc->nhc", p, x)
    out = torch.einsum("nhdc,nhc->nhd", wv.view(N, heads, D, C), mixed).reshape(N, C) + bv
    out = torch.where(seen, out, 0.0)
    return Saved(out, q, q_in, mixed, lse)


def readout_attention_backward_reference(dout, drow, x, row, saved: Saved, wq, wk, bk, wv, heads,
                                         mask=None) -> Grads:
    """``readout_attention_backward`` in PyTorch ops, in x's dtype."""
    N, L, C = x.shape
    D = C // heads
    wq, wk, bk, wv = _per_seq(N, wq.dim() == 3, wq, wk, bk, wv)
    keys = torch.ones(N, L, dtype=torch.bool, device=x.device) if mask is None else mask
    seen = keys.any(-1)
    dout = torch.where(seen[:, None], dout, 0.0)
    dout_heads = _heads_of(dout, heads)
    d_mixed = torch.einsum("nho,noc->nhc", dout_heads, wv)
    s = torch.einsum("nhc,nlc->nhl", saved.q_in, x)
    p = torch.where(keys[:, None, :], (s - saved.lse[..., None]).exp(), 0.0)
    dp = torch.einsum("nhc,nlc->nhl", d_mixed, x)
    ds = p * (dp - (d_mixed * saved.mixed).sum(-1, keepdim=True))
    d_q_in = torch.einsum("nhl,nlc->nhc", ds, x)
    d_qbk = ds.sum(-1)  # (N, H)
    dx = torch.einsum("nhl,nhc->nlc", p, d_mixed) + torch.einsum("nhl,nhc->nlc", ds, saved.q_in)
    rows_dqin = d_q_in.repeat_interleave(D, 1)  # (N, C, C): d_q_in[head(o)] at row o
    dq = ((wk * rows_dqin).sum(-1) + d_qbk.repeat_interleave(D, 1) * bk) * D ** -0.5
    dx[:, row] += torch.einsum("no,noc->nc", dq, wq)
    if drow is not None:
        dx[:, row] += drow
    q_heads = _heads_of(saved.q, heads)
    return Grads(dx, dq, d_q_in, q_heads, q_heads * d_qbk[..., None], dout_heads)


# ----------------------------------------------------------------------------------------------
# Host side.
# ----------------------------------------------------------------------------------------------


def _check(x, row, weights, biases, heads, mask) -> None:
    if x.dim() != 3:
        raise ValueError(f"readout_attention: x must be (N, L, C), got {tuple(x.shape)}")
    N, L, C = x.shape
    if C > MAX_C or heads > MAX_HEADS or C % heads:
        raise ValueError(f"readout_attention: hidden {C} with {heads} heads is not supported (hidden <= {MAX_C}, "
                         f"heads <= {MAX_HEADS}, hidden divisible by heads)")
    if not 0 <= row < L:
        raise ValueError(f"readout_attention: row {row} outside the sequence of {L}")
    runs = weights[0].dim() == 3
    want = ((weights[0].shape[0],) if runs else ()) + (C, C)
    if any(tuple(w.shape) != want for w in weights) or any(tuple(b.shape) != want[:-1] for b in biases):
        raise ValueError(f"readout_attention: weights must be {want} and biases {want[:-1]}")
    if runs and N % want[0]:
        raise ValueError(f"readout_attention: {N} sequences do not split into {want[0]} runs")
    if mask is not None and (mask.dtype != torch.bool or tuple(mask.shape) != (N, L)):
        raise ValueError(f"readout_attention: mask must be bool {(N, L)}, got {mask.dtype} {tuple(mask.shape)}")


def _operands(n: int, weights, biases) -> tuple[list[torch.Tensor], list[torch.Tensor], int, int, int]:
    """Weights and biases as the kernels read them -- fp32, each run's part contiguous, one run stride for all the
    weights and one for all the biases (a pack's buffer views keep theirs; otherwise copied) -- with those strides
    and the sequences per run, for n sequences."""
    runs = weights[0].dim() == 3

    def fp32(t: torch.Tensor) -> torch.Tensor:
        t = t.float()
        return t if (t[0] if runs else t).is_contiguous() else t.contiguous()

    ws, bs = [fp32(w) for w in weights], [fp32(b) for b in biases]
    if not runs:
        return ws, bs, 0, 0, n
    if len({w.stride(0) for w in ws}) > 1 or len({b.stride(0) for b in bs}) > 1:
        ws, bs = [w.contiguous() for w in ws], [b.contiguous() for b in bs]
    return ws, bs, ws[0].stride(0), bs[0].stride(0), n // ws[0].shape[0]


def _launch_args(direction: str, x: torch.Tensor, mask: torch.Tensor | None):
    N, L, C = x.shape
    block_c = max(16, triton.next_power_of_2(C))
    block_l, warps = _TILES[direction][block_c]
    consts = dict(BLOCK_C=block_c, BLOCK_O=_BLOCK_O, H_PAD=_H_PAD, BLOCK_L=block_l, DOT_PRECISION=_PRECISION,
                  num_warps=warps)
    mask_arg, mask_len = (x.view(torch.uint8), 0) if mask is None else (mask.contiguous().view(torch.uint8), L)
    return consts, mask_arg, mask_len


def _empty(shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """An fp32 output the kernel writes whole (the tests fill it with NaN instead)."""
    return torch.empty(shape, device=device, dtype=torch.float32)


def _as_x(x: torch.Tensor) -> torch.Tensor:
    """x as the kernels read it: fp32 and contiguous, so that dx (made contiguous) shares its strides. (A causal
    decoder's readout layer passes the first positions of longer sequences: copied here.)"""
    return x.float().contiguous()


def readout_attention_forward(x: torch.Tensor, row: int, wq, bq, wk, bk, wv, bv, heads: int,
                              mask: torch.Tensor | None = None) -> Saved:
    """The attention of the query ``x[:, row] Wqᵀ + bq`` over x's rows (N, L, C) through keys x Wkᵀ + bk and values
    x Wvᵀ + bv, ``heads`` heads, none of them projected; ``mask`` bool (N, L), True at keys that take part. A
    pack's weights (R, C, C) and biases (R, C) serve x's sequences run by run (N/R each)."""
    _check(x, row, (wq, wk, wv), (bq, bk, bv), heads, mask)
    if not use_triton(x, wq, mask):
        return readout_attention_forward_reference(x.float(), row, *(t.float() for t in (wq, bq, wk, bk, wv, bv)),
                                                   heads, mask)
    x = _as_x(x)
    N, L, C = x.shape
    (wq, wk, wv), (bq, bk, bv), w_rs, b_rs, per_run = _operands(N, (wq, wk, wv), (bq, bk, bv))
    consts, mask_arg, mask_len = _launch_args("fwd", x, mask)
    out, q = _empty((N, C), x.device), _empty((N, C), x.device)
    q_in, mixed, lse = _empty((N, heads, C), x.device), _empty((N, heads, C), x.device), _empty((N, heads), x.device)
    _readout_fwd[(N,)](x, mask_arg, wq, bq, wk, bk, wv, bv, out, q, q_in, mixed, lse,
                       L, C, C // heads, heads, row, per_run, x.stride(0), x.stride(1), w_rs, b_rs, mask_len,
                       (C // heads) ** -0.5, **consts, **pdl(x))
    return Saved(out, q, q_in, mixed, lse)


def readout_attention_backward(dout: torch.Tensor, drow: torch.Tensor | None, x: torch.Tensor, row: int,
                               saved: Saved, wq, wk, bk, wv, heads: int, mask: torch.Tensor | None = None) -> Grads:
    """The gradients of ``readout_attention_forward``'s output, given its gradient ``dout`` (N, C) and the gradient
    ``drow`` (N, C) (or None) of x's row ``row`` used elsewhere (the residual): x's, the query's, and the weight
    gradients' rows (``Grads``). dx is float32."""
    _check(x, row, (wq, wk, wv), (bk, bk, bk), heads, mask)
    N, L, C = x.shape
    if tuple(dout.shape) != (N, C) or (drow is not None and tuple(drow.shape) != (N, C)):
        raise ValueError(f"readout_attention_backward: dout and drow must be {(N, C)}")
    if not use_triton(x, dout, wq, mask):
        return readout_attention_backward_reference(dout.float(), None if drow is None else drow.float(), x.float(),
                                                    row, saved, *(t.float() for t in (wq, wk, bk, wv)), heads, mask)
    x = _as_x(x)
    (wq, wk, wv), (bk,), w_rs, b_rs, per_run = _operands(N, (wq, wk, wv), (bk,))
    consts, mask_arg, mask_len = _launch_args("bwd", x, mask)
    dout = dout.float().contiguous()
    drow_arg = dout if drow is None else drow.float()
    if drow_arg.stride(-1) != 1:
        drow_arg = drow_arg.contiguous()
    dx, dq = _empty((N, L, C), x.device), _empty((N, C), x.device)
    d_q_in, q_heads, bk_rows, dout_heads = (_empty((N, heads, C), x.device) for _ in range(4))
    _readout_bwd[(N,)](x, mask_arg, wq, wk, bk, wv, dout, drow_arg, saved.q, saved.q_in, saved.mixed, saved.lse,
                       dx, dq, d_q_in, q_heads, bk_rows, dout_heads,
                       L, C, C // heads, heads, row, per_run, x.stride(0), x.stride(1), w_rs, b_rs, mask_len,
                       (C // heads) ** -0.5, drow_arg.stride(0), int(drow is not None), **consts, **pdl(x))
    return Grads(dx, dq, d_q_in, q_heads, bk_rows, dout_heads)


def compile_specs() -> list[CompileSpec]:
    """Every configuration the launchers can pick: per direction and padded width BLOCK_C."""
    specs = []
    # (integers as the launches pass them: each fits 32 bits at any shape they take; n is widened in the kernels)
    common = dict(L="i32", C="i32", D="i32", H="i32", row="i32", per_run="i32", x_ns="i32", x_ls="i32", w_rs="i32",
                  b_rs="i32", mask_len="i32", scale="fp32")
    fwd = dict(X="*fp32", MASK="*u8", WQ="*fp32", BQ="*fp32", WK="*fp32", BK="*fp32", WV="*fp32", BV="*fp32",
               OUT="*fp32", Q="*fp32", QIN="*fp32", MIXED="*fp32", LSE="*fp32", **common)
    bwd = dict(X="*fp32", MASK="*u8", WQ="*fp32", WK="*fp32", BK="*fp32", WV="*fp32", DOUT="*fp32", DROW="*fp32",
               Q="*fp32", QIN="*fp32", MIXED="*fp32", LSE="*fp32", DX="*fp32", DQ="*fp32", DQIN="*fp32",
               QHEADS="*fp32", BKROWS="*fp32", DOUTHEADS="*fp32", **common, drow_ns="i32", has_drow="i32")
    for name, fn, sig in (("fwd", _readout_fwd, fwd), ("bwd", _readout_bwd, bwd)):
        for block_c, (block_l, warps) in _TILES[name].items():
            consts = dict(BLOCK_C=block_c, BLOCK_O=_BLOCK_O, H_PAD=_H_PAD, BLOCK_L=block_l, DOT_PRECISION=_PRECISION)
            specs.append(CompileSpec(name=f"readout_attention_{name}[BLOCK_C={block_c}]", fn=fn,
                                     signature={**sig, **{k: "constexpr" for k in consts}}, constexprs=consts,
                                     num_warps=warps))
    return specs
