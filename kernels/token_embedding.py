"""A decoder's input, ``tok[ids] + pos[:L]``, and a deterministic backward for small vocabularies:
``token_position_embedding(ids, tok, pos)``.

GPT's input is the token row plus the position row. In PyTorch that is a gather and an add, and the
backward three more: ``embedding_dense_backward`` for the token table (past 3,072 ids on CUDA it sorts
the ids first, in several kernels; the modular task's full batch has ~17,000), a sum over the batch for
the positions, and ``slice_backward`` to put those in a table of ``max_len`` rows. Here it is one
launch each way:

- forward: each program gathers a block of rows' token and position rows and adds them;
- backward: each program owns a (BLOCK_V, BLOCK_D) block of one table's gradient -- token rows, or
  position rows -- and walks the batch's ids: ``d += onehot(ids == v)ᵀ dx`` on the tensor cores
  (for positions the "ids" are the rows' positions). A position row past L gets 0. A long batch's ids are
  split among a block's programs, the last to finish summing their partials in split order (``_split.py``;
  one program walking the modular benchmark's 3,072 ids took 48 µs on an H200). No sort: every element is
  written by one program, in a fixed order, so a step repeats to the bit.

The one-hot product costs (V + max_len) / BLOCK_V programs' walks over the batch, which is what the
modular task's 117 tokens afford and a 30,522-word vocabulary does not: ``MAX_V`` caps the tables
(the trainer keeps PyTorch's ops past it).

Arguments: ``ids`` int64 (B, L) in [0, V) (not checked on the device), ``tok`` (V, C) and ``pos``
(P, C) float32, L <= P; or, for R packed runs, ids (R, B, L), tok (R, V, C), pos (R, P, C), each run
reading its own tables (the run axis of any stride, rows contiguous: ``PackedAdamW``'s views). Returns
(B, L, C) / (R, B, L, C) float32, differentiable in both tables.

CUDA tensors run Triton; CPU tensors run ``token_position_embedding_reference`` (or Triton under
``TRITON_INTERPRET=1``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _split
from ._compile import CompileSpec
from ._dispatch import check_dtype, use_triton
from ._pdl import enter, pdl

MAX_V = 2048  # rows of tok + pos the one-hot backward takes
MAX_C = 1024
_BLOCK_V, _BLOCK_N = 16, 64  # backward: table rows per program, ids per step of its walk
_FWD_TILE = 2048  # forward: rows x padded C per program
# The one-hot product is a scatter-add, which PyTorch never rounds to TF32: tf32x3 (dx split into two TF32
# parts; the one-hot is exact) keeps about fp32's accuracy whatever torch's fp32-matmul switch says.
_PRECISION = "tf32x3"


def _block_d(c: int) -> int:
    return max(16, min(64, triton.next_power_of_2(c)))


def _empty(shape, dtype, device) -> torch.Tensor:
    """Every output buffer the kernels fill comes from here (tests poison it to catch unwritten memory)."""
    return torch.empty(shape, dtype=dtype, device=device)


@triton.jit
def _embed_fwd_kernel(IDS, TOK, POS, OUT, n_rows, L, C, ids_rs, ids_bs, tok_rs, pos_rs, blocks,
                      BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, PDL: tl.constexpr = False):
    enter(PDL)
    pid = tl.program_id(0)
    run = (pid // blocks).to(tl.int64)
    rows = (pid % blocks) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.arange(0, BLOCK_C)
    ok = (rows < n_rows)[:, None] & (cols < C)[None, :]
    ids = tl.load(IDS + run * ids_rs + (rows // L).to(tl.int64) * ids_bs + rows % L, mask=rows < n_rows,
                  other=0)
    t = tl.load(TOK + run * tok_rs + ids[:, None] * C + cols[None, :], mask=ok, other=0.0)
    p = tl.load(POS + run * pos_rs + (rows % L)[:, None] * C + cols[None, :], mask=ok, other=0.0)
    tl.store(OUT + (run * n_rows + rows)[:, None] * C + cols[None, :], t + p, mask=ok)


@triton.jit
def _embed_bwd_kernel(IDS, DX, DTOK, DPOS, SCRATCH, COUNTER, n_rows, L, C, V, P, ids_rs, ids_bs, dtok_rs, dpos_rs,
                      tok_blocks, d_blocks, splits, chunk,
                      BLOCK_V: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                      DOT_PRECISION: tl.constexpr, PDL: tl.constexpr = False):
    enter(PDL)
    run = tl.program_id(1).to(tl.int64)
    split = tl.program_id(0) % splits  # a block's splits are neighbours
    slot = tl.program_id(0) // splits  # (table block, column block): the block's ticket counter
    blocks = tl.num_programs(0) // splits
    blk = slot // d_blocks
    cols = (slot % d_blocks) * BLOCK_D + tl.arange(0, BLOCK_D)
    is_tok = blk < tok_blocks
    first = tl.where(is_tok, blk, blk - tok_blocks) * BLOCK_V
    table_rows = first + tl.arange(0, BLOCK_V)
    # a position block past L has nothing to gather: its first split stores zeros, the others nothing
    walks = is_tok | (first < L)
    acc = tl.zeros([BLOCK_V, BLOCK_D], dtype=tl.float32)
    if walks:
        for n0 in range(split * chunk, tl.minimum(n_rows, split * chunk + chunk), BLOCK_N):
            rows = n0 + tl.arange(0, BLOCK_N)
            live = rows < n_rows
            if is_tok:
                key = tl.load(IDS + run * ids_rs + (rows // L).to(tl.int64) * ids_bs + rows % L, mask=live,
                              other=-1)
            else:
                key = tl.where(live, rows % L, -1).to(tl.int64)
            onehot = (key[None, :] == table_rows[:, None]).to(tl.float32)
            dx = tl.load(DX + (run * n_rows + rows)[:, None] * C + cols[None, :],
                         mask=live[:, None] & (cols < C)[None, :], other=0.0)
            acc = tl.dot(onehot, dx, acc, input_precision=DOT_PRECISION)
    if (splits == 1) | (walks == 0):
        if split == 0:
            _store_block(DTOK, DPOS, run, dtok_rs, dpos_rs, table_rows, cols, is_tok, V, P, C, acc)
    else:
        # this split's partial, then a ticket; the block's last ticket sums the partials in split order (_split.py)
        lanes_v, lanes_d = tl.arange(0, BLOCK_V), tl.arange(0, BLOCK_D)
        block_part = SCRATCH + (run * blocks + slot) * splits * (BLOCK_V * BLOCK_D)
        tl.store(block_part + split * (BLOCK_V * BLOCK_D) + lanes_v[:, None] * BLOCK_D + lanes_d[None, :], acc)
        tl.debug_barrier()  # one thread takes the program's ticket: every warp has stored first
        counter = COUNTER + run * blocks + slot
        ticket = tl.atomic_add(counter, 1, sem="acq_rel")
        if ticket == splits - 1:
            acc = tl.zeros([BLOCK_V, BLOCK_D], dtype=tl.float32)
            for s in range(0, splits):  # from L2 (.cg), where the other programs' stores are
                acc += tl.load(block_part + s * (BLOCK_V * BLOCK_D) + lanes_v[:, None] * BLOCK_D + lanes_d[None, :],
                               cache_modifier=".cg")
            tl.store(counter, 0)  # ready for the next launch
            _store_block(DTOK, DPOS, run, dtok_rs, dpos_rs, table_rows, cols, is_tok, V, P, C, acc)


@triton.jit
def _store_block(DTOK, DPOS, run, dtok_rs, dpos_rs, table_rows, cols, is_tok, V, P, C, acc):
    if is_tok:
        tl.store(DTOK + run * dtok_rs + table_rows[:, None] * C + cols[None, :], acc,
                 mask=(table_rows < V)[:, None] & (cols < C)[None, :])
    else:
        tl.store(DPOS + run * dpos_rs + table_rows[:, None] * C + cols[None, :], acc,
                 mask=(table_rows < P)[:, None] & (cols < C)[None, :])


def _runs(t: torch.Tensor) -> torch.Tensor:
    return t if t.dim() == 3 else t.unsqueeze(0)


def _id_strides(ids: torch.Tensor) -> tuple[int, int]:
    """(run stride, sequence stride) of (B, L) or (R, B, L) ids whose rows are contiguous (a decoder's
    ids are a slice of the task's longer rows: read in place, not copied)."""
    return (0 if ids.dim() == 2 else ids.stride(0)), ids.stride(-2)


def _forward(ids, tok, pos):
    tok3, pos3 = _runs(tok), _runs(pos)
    runs, n_rows, c, length = tok3.shape[0], ids.shape[-2] * ids.shape[-1], tok.shape[-1], ids.shape[-1]
    block_c = triton.next_power_of_2(c)
    block_r = max(1, _FWD_TILE // block_c)
    out = _empty((*ids.shape, c), torch.float32, ids.device)
    blocks = triton.cdiv(n_rows, block_r)
    if runs * blocks:
        _embed_fwd_kernel[(runs * blocks,)](ids, tok3, pos3, out, n_rows, length, c, *_id_strides(ids),
                                            tok3.stride(0), pos3.stride(0), blocks, BLOCK_R=block_r, BLOCK_C=block_c,
                                            num_warps=4, **pdl(out))
    return out


def _backward(ids, dx, dtok, dpos):
    runs = 1 if dtok.dim() == 2 else dtok.shape[0]
    v, c = dtok.shape[-2:]
    p = dpos.shape[-2]
    n_rows, length = ids.shape[-2] * ids.shape[-1], ids.shape[-1]
    block_d = _block_d(c)
    tok_blocks, d_blocks = triton.cdiv(v, _BLOCK_V), triton.cdiv(c, block_d)
    blocks = (tok_blocks + triton.cdiv(p, _BLOCK_V)) * d_blocks
    # a long batch's ids split among a block's programs (17,238 at the paper's full batch); counted by the
    # blocks that walk (the token blocks), the position blocks past L storing zeros alone
    splits, chunk = _split.split_rows(n_rows, runs * tok_blocks * d_blocks, _BLOCK_N)
    scratch = _split.scratch(dx.device, torch.float32, runs * blocks * splits * _BLOCK_V * block_d if splits > 1 else 0)
    counters = _split.scratch(dx.device, torch.int32, runs * blocks if splits > 1 else 0)
    _embed_bwd_kernel[(blocks * splits, runs)](
        ids, dx.float().contiguous(), dtok, dpos, scratch, counters, n_rows, length, c, v, p, *_id_strides(ids),
        _runs(dtok).stride(0), _runs(dpos).stride(0), tok_blocks, d_blocks, splits, chunk, BLOCK_V=_BLOCK_V,
        BLOCK_N=_BLOCK_N, BLOCK_D=block_d, DOT_PRECISION=_PRECISION, num_warps=4, **pdl(dtok))
    return dtok, dpos


class _EmbeddingFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, ids, tok, pos):
        ctx.save_for_backward(ids)
        ctx.shapes = tok.shape, pos.shape
        return _forward(ids, tok, pos)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dx):
        (ids,) = ctx.saved_tensors
        tok_shape, pos_shape = ctx.shapes
        dtok, dpos = _backward(ids, dx, _empty(tok_shape, torch.float32, dx.device),
                               _empty(pos_shape, torch.float32, dx.device))
        return None, dtok, dpos


def token_position_embedding_reference(ids: torch.Tensor, tok: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """The executable spec, in PyTorch ops (differentiable by autograd)."""
    length = ids.shape[-1]
    if tok.dim() == 2:
        return torch.nn.functional.embedding(ids, tok) + pos[:length]
    rows = torch.stack([torch.nn.functional.embedding(ids[r], tok[r]) for r in range(tok.shape[0])])
    return rows + pos[:, None, :length]


def token_position_embedding_backward(ids: torch.Tensor, dx: torch.Tensor, dtok: torch.Tensor,
                                      dpos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The tables' gradients for the output gradient ``dx``, written into ``dtok`` and ``dpos`` (float32, the
    tables' shapes, rows contiguous; a pack's run axis of any stride), every element (rows no id reads get 0):
    for a caller whose gradients have a place to go already (the optimiser's buffer,
    ``grokfast_train/models/deferred.py``). Returns (dtok, dpos)."""
    for name, t in (("dtok", dtok), ("dpos", dpos)):
        if t.dtype != torch.float32 or t.dim() != ids.dim() or t.stride(-1) != 1 or t.stride(-2) != t.shape[-1]:
            raise ValueError(f"token_position_embedding_backward: {name} must be float32 like its table, with "
                             f"contiguous rows; got {t.dtype} {tuple(t.shape)}")
    _check(ids, dtok, dpos)
    if not use_triton(ids, dx, dtok, dpos):
        return token_position_embedding_backward_reference(ids, dx, dtok, dpos)
    return _backward(ids, dx, dtok, dpos)


def token_position_embedding_backward_reference(ids, dx, dtok, dpos):
    """The executable spec of the backward: row v of dtok is the sum of dx over the positions holding id v,
    row l of dpos the sum over the batch at position l (0 past L), per run; fp32 ``index_add``."""
    length, c = ids.shape[-1], dtok.shape[-1]
    for r in range(1 if ids.dim() == 2 else ids.shape[0]):
        i, d, t, p = (ids, dx, dtok, dpos) if ids.dim() == 2 else (ids[r], dx[r], dtok[r], dpos[r])
        t.copy_(torch.zeros_like(t).index_add_(0, i.reshape(-1), d.float().reshape(-1, c)))
        p.zero_()[:length] = d.float().reshape(-1, length, c).sum(0)
    return dtok, dpos


def _check(ids, tok, pos) -> None:
    for name, t in (("tok", tok), ("pos", pos)):
        check_dtype(f"token_position_embedding: {name}", t, (torch.float32,))
        if t.dim() != tok.dim() or t.stride(-1) != 1 or t.stride(-2) != t.shape[-1]:
            raise ValueError(f"token_position_embedding: {name} must be (V, C), or (R, V, C) for a pack, with "
                             f"contiguous rows; got {tuple(t.shape)}")
    if tok.dim() not in (2, 3) or ids.dim() != tok.dim() or ids.dtype != torch.int64 \
            or (tok.dim() == 3 and (ids.shape[0] != tok.shape[0] or pos.shape[0] != tok.shape[0])):
        raise ValueError(f"token_position_embedding: ids int64 (B, L) with tables (V, C), or (R, B, L) with (R, V, C);"
                         f" got ids {ids.dtype} {tuple(ids.shape)}, tok {tuple(tok.shape)}, pos {tuple(pos.shape)}")
    if ids.stride(-1) != 1 and ids.shape[-1] > 1:
        raise ValueError("token_position_embedding: ids need contiguous rows (last stride 1)")
    if pos.shape[-1] != tok.shape[-1] or ids.shape[-1] > pos.shape[-2]:
        raise ValueError(f"token_position_embedding: pos {tuple(pos.shape)} must have tok's width and at least "
                         f"{ids.shape[-1]} rows")
    if tok.shape[-2] + pos.shape[-2] > MAX_V or tok.shape[-1] > MAX_C:
        raise ValueError(f"token_position_embedding: tables of {tok.shape[-2]} + {pos.shape[-2]} rows x "
                         f"{tok.shape[-1]} unsupported; supported: at most {MAX_V} rows in all, width <= {MAX_C}")


def token_position_embedding(ids: torch.Tensor, tok: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """``tok[ids] + pos[:L]`` (per run for a pack), differentiable in both tables; see the module docstring."""
    _check(ids, tok, pos)
    if not use_triton(ids, tok, pos):
        return token_position_embedding_reference(ids, tok, pos)
    return _EmbeddingFn.apply(ids, tok, pos)


def compile_specs() -> list[CompileSpec]:
    """Every configuration the launchers can pick: forward per padded width; backward per D block."""
    specs = []
    for k in range(0, 11):  # BLOCK_C 1 ... 1024 = MAX_C
        block_c = 2 ** k
        specs.append(CompileSpec(
            name=f"token_embedding_fwd[BLOCK_C={block_c}]", fn=_embed_fwd_kernel,
            signature=dict(IDS="*i64", TOK="*fp32", POS="*fp32", OUT="*fp32", n_rows="i32", L="i32", C="i32",
                           ids_rs="i32", ids_bs="i32", tok_rs="i64", pos_rs="i64", blocks="i32",
                           BLOCK_R="constexpr", BLOCK_C="constexpr"),
            constexprs=dict(BLOCK_R=max(1, _FWD_TILE // block_c), BLOCK_C=block_c), num_warps=4))
    for block_d in (16, 32, 64):
        for precision in (_PRECISION,):
            specs.append(CompileSpec(
                name=f"token_embedding_bwd[BLOCK_D={block_d},{precision}]", fn=_embed_bwd_kernel,
                signature=dict(IDS="*i64", DX="*fp32", DTOK="*fp32", DPOS="*fp32", SCRATCH="*fp32", COUNTER="*i32",
                               n_rows="i32", L="i32", C="i32",
                               V="i32", P="i32", ids_rs="i32", ids_bs="i32", dtok_rs="i64", dpos_rs="i64",
                               tok_blocks="i32", d_blocks="i32", splits="i32", chunk="i32",
                               BLOCK_V="constexpr",
                               BLOCK_N="constexpr", BLOCK_D="constexpr", DOT_PRECISION="constexpr"),
                constexprs=dict(BLOCK_V=_BLOCK_V, BLOCK_N=_BLOCK_N, BLOCK_D=block_d, DOT_PRECISION=precision),
                num_warps=4, tensor_cores=True))
    return specs
