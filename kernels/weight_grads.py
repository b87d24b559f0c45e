"""Every linear layer's weight and bias gradient of a step in one launch: ``linear_weight_grads(problems)``.

Autograd computes a linear layer's backward as three kernels: ``dx = dy W`` (which the layer below
waits for), ``dW = dyᵀ x`` and ``db = Σ dy`` (which nothing in the backward waits for). In a small
model's step every one of them is a launch too short to hide, and the weight gradients of all the
layers are independent of each other. So the trainer's linear layers can leave theirs for later
(``grokfast_train/models/deferred.py``, ``deferred()``): the backward computes the ``dx`` chain
alone, and then this kernel computes every layer's ``dW`` and ``db`` at once. A program owns one
(BLOCK_N, BLOCK_K) tile of one layer's (one run's) ``dW`` and a chunk of its M rows: it walks them,
``acc += dyᵀ x`` on the tensor cores, and the programs of a layer's first column of tiles also sum ``dy`` for
``db``. Where M is long (k and v over every position of a batch: 3,072 rows at the modular benchmark's batch,
17,238 at the paper's full batch) a tile's rows are split among several programs, the last to finish summing
their partials in split order (``_split.py``; on an H200 the modular step's launch went from 119 to 41 µs).
Every element is written by exactly one program, in a fixed order: deterministic, whichever program is last.

A problem is ``WeightGrad(x, dy, dw, db=None, accumulate=False)``:
- ``x`` (M, K) or (R, M, K) and ``dy`` (M, N) or (R, M, N), float32 or bfloat16 (both the same), rows of
  any stride, each row contiguous;
- ``dw`` float32 (N, K) or (R, N, K), contiguous per run, gets ``dyᵀ x`` (``accumulate``: added to it);
- ``db`` float32 (N,) or (R, N), or None, gets ``Σ_m dy`` (or has it added).
A problem without ``x`` and ``dw`` is a sum alone, ``db (+)= Σ_m dy``: a LayerNorm's weight and bias
gradients are sums of its backward programs' partial sums, which nothing in the backward waits for either,
so they join the same launch (``kernels.layer_norm_backward(..., reduce=False)``). A sum's ``db`` may be
wider than ``dy``: its columns past ``dy``'s get zeros (or keep their value, accumulating) -- a position
table's rows past the sequence length, the token types past type 0
(``kernels.embedding_layer_norm_backward(..., reduce=False)``), written in the same launch.
Problems are launched up to ``MAX_PROBLEMS`` at a time, the longest first (programs that walk the most
rows start earliest). fp32 products follow PyTorch's fp32-matmul switch, as the attention kernel's do:
"tf32x3" (about fp32's accuracy, on tensor cores) unless TF32 is allowed.

CUDA tensors run Triton; CPU tensors run ``linear_weight_grads_reference`` (or Triton under
``TRITON_INTERPRET=1``).
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
import triton
import triton.language as tl

from . import _split
from ._compile import SIGNATURE_DTYPES, CompileSpec
from ._dispatch import INTERPRET, check_dtype, dot_precision, use_triton
from ._pdl import enter, pdl

MAX_PROBLEMS = 17  # a 1-layer encoder's step: 8 linear layers and 9 sums (2 LayerNorms', the embedding block's 4, bk's)
SUPPORTED_DTYPES = (torch.float32, torch.bfloat16)
_META = 17  # ints per problem in the launch's table (see _meta)
# (BLOCK_M, BLOCK_N, BLOCK_K, warps) per operand dtype
_TILES = {torch.float32: (32, 32, 32, 4), torch.bfloat16: (32, 32, 32, 4)}


class WeightGrad(NamedTuple):
    x: torch.Tensor | None
    dy: torch.Tensor
    dw: torch.Tensor | None
    db: torch.Tensor | None = None
    accumulate: bool = False


@triton.jit
def _pick(p, slots, P: tl.constexpr):
    """slots[p] for a runtime p < P: a tuple of one pointer per problem, indexed by unrolled compares."""
    a = slots[0]
    for i in tl.static_range(1, P):
        if p == i:
            a = slots[i]
    return a


@triton.jit
def _weight_grad_kernel(META, X, DY, DW, DB,  # tuples: one pointer per problem
                        SCRATCH, COUNTER,  # split tiles' partials and tickets (counters zero between launches)
                        P: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                        DOT_PRECISION: tl.constexpr, UPCAST: tl.constexpr, PDL: tl.constexpr = False):
    enter(PDL)
    pid = tl.program_id(0)
    p = pid * 0  # which problem: the last whose first program is <= pid (the table lists them in order)
    for i in tl.static_range(1, P):
        p = tl.where(pid >= tl.load(META + i * 17 + 10), i, p)
    meta = META + p * 17
    m, n, k, n_out = tl.load(meta + 0), tl.load(meta + 1), tl.load(meta + 2), tl.load(meta + 12)
    x_rs, x_ms, dy_rs, dy_ms = tl.load(meta + 4), tl.load(meta + 5), tl.load(meta + 6), tl.load(meta + 7)
    dw_rs, db_rs, first, flags = tl.load(meta + 8), tl.load(meta + 9), tl.load(meta + 10), tl.load(meta + 11)
    splits, chunk = tl.load(meta + 13), tl.load(meta + 14)
    X, DY, DW, DB = _pick(p, X, P), _pick(p, DY, P), _pick(p, DW, P), _pick(p, DB, P)

    # a sum alone (k = 0): one column of tiles, no product, its dw store off; its tiles span db's n_out >= n
    # columns, those past n summing nothing (zeros)
    tiles_k = tl.maximum(tl.cdiv(k, BLOCK_K), 1)
    tiles = tl.cdiv(n_out, BLOCK_N) * tiles_k
    local = pid - first
    split = local % splits  # a tile's splits are neighbours: programs that finish together
    slot = local // splits  # (run, tile): the tile's ticket counter
    run = (slot // tiles).to(tl.int64)
    tile_n, tile_k = (slot % tiles) // tiles_k, (slot % tiles) % tiles_k
    offs_n = tile_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tile_k * BLOCK_K + tl.arange(0, BLOCK_K)
    rows = tl.arange(0, BLOCK_M)
    X += run * x_rs
    DY += run * dy_rs

    acc = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
    bsum = tl.zeros([BLOCK_N], dtype=tl.float32)
    for m0 in range(split * chunk, tl.minimum(m, split * chunk + chunk), BLOCK_M):
        r = m0 + rows
        r_ok = (r < m)[:, None]
        dy = tl.load(DY + r.to(tl.int64)[:, None] * dy_ms + offs_n[None, :], mask=r_ok & (offs_n < n)[None, :],
                     other=0.0)
        x = tl.load(X + r.to(tl.int64)[:, None] * x_ms + offs_k[None, :], mask=r_ok & (offs_k < k)[None, :],
                    other=0.0)
        if k > 0:
            if UPCAST:  # the interpreter's bf16 dot multiplies bit patterns; bf16 products are exact in fp32
                dy, x = dy.to(tl.float32), x.to(tl.float32)
            acc = tl.dot(tl.trans(dy), x, acc, input_precision=DOT_PRECISION)
        bsum += tl.sum(dy.to(tl.float32), axis=0)

    if splits == 1:
        _write(DW, DB, run, dw_rs, db_rs, offs_n, offs_k, n, k, n_out, flags, tile_k, acc, bsum)
    else:
        # this split's partial, then a ticket; the last of the tile's tickets sums the partials in split order
        PART: tl.constexpr = BLOCK_N * BLOCK_K + BLOCK_N
        lanes_n, lanes_k = tl.arange(0, BLOCK_N), tl.arange(0, BLOCK_K)
        tile_part = SCRATCH + tl.load(meta + 15) + slot.to(tl.int64) * splits * PART
        part = tile_part + split * PART
        tl.store(part + lanes_n[:, None] * BLOCK_K + lanes_k[None, :], acc)
        tl.store(part + BLOCK_N * BLOCK_K + lanes_n, bsum)
        # one thread takes the program's ticket, so the barrier first: every warp of the program has stored
        tl.debug_barrier()
        counter = COUNTER + tl.load(meta + 16) + slot
        ticket = tl.atomic_add(counter, 1, sem="acq_rel")
        if ticket == splits - 1:
            acc = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
            bsum = tl.zeros([BLOCK_N], dtype=tl.float32)
            for s in range(0, splits):  # from L2 (.cg), where the other programs' stores are
                part = tile_part + s * PART
                acc += tl.load(part + lanes_n[:, None] * BLOCK_K + lanes_k[None, :], cache_modifier=".cg")
                bsum += tl.load(part + BLOCK_N * BLOCK_K + lanes_n, cache_modifier=".cg")
            tl.store(counter, 0)  # ready for the next launch (the launch boundary orders it before any later read)
            _write(DW, DB, run, dw_rs, db_rs, offs_n, offs_k, n, k, n_out, flags, tile_k, acc, bsum)


@triton.jit
def _write(DW, DB, run, dw_rs, db_rs, offs_n, offs_k, n, k, n_out, flags, tile_k, acc, bsum):
    """A tile's dw (and, in the first column of tiles, db), written or added to (flags: 1 a bias, 2 accumulate)."""
    accumulate = (flags & 2) != 0
    out = DW + run * dw_rs + offs_n[:, None] * k + offs_k[None, :]
    ok = (offs_n < n)[:, None] & (offs_k < k)[None, :]
    if accumulate:
        acc += tl.load(out, mask=ok, other=0.0)
    tl.store(out, acc, mask=ok)
    if (flags & 1) != 0:  # a bias: the first column of tiles writes it
        if tile_k == 0:
            bout = DB + run * db_rs + offs_n
            if accumulate:
                bsum += tl.load(bout, mask=offs_n < n_out, other=0.0)
            tl.store(bout, bsum, mask=offs_n < n_out)


def _rows(t: torch.Tensor) -> tuple[int, int]:
    """(run stride, row stride) of a (M, C) or (R, M, C) operand."""
    return (0, t.stride(0)) if t.dim() == 2 else (t.stride(0), t.stride(1))


def _meta(problems: Sequence[WeightGrad], tiles: tuple[int, int, int]) -> tuple[list[int], int, int, int]:
    """The launch's table, one row of ``_META`` ints per problem; its number of programs, and the floats of
    scratch and the counters its split tiles take."""
    block_m, block_n, block_k = tiles
    part = block_n * block_k + block_n
    rows, first, scratch, counters = [], 0, 0, 0
    for x, dy, dw, db, acc in problems:
        runs = 1 if dy.dim() == 2 else dy.shape[0]
        m, k, n = dy.shape[-2], 0 if x is None else x.shape[-1], dy.shape[-1]  # k = 0: a sum alone
        n_out = n if db is None else db.shape[-1]  # > n: a sum's zero tail
        slots = runs * triton.cdiv(n_out, block_n) * max(triton.cdiv(k, block_k), 1)  # (run, tile) pairs
        splits, chunk = _split.split_rows(m, slots, block_m)
        rows += [m, n, k, runs, *((0, 0) if x is None else _rows(x)), *_rows(dy),
                 0 if dw is None or dw.dim() == 2 else dw.stride(0),
                 0 if db is None or db.dim() == 1 else db.stride(0), first, (db is not None) | (2 * acc), n_out,
                 splits, chunk, scratch, counters]
        first += slots * splits
        if splits > 1:
            scratch += slots * splits * part
            counters += slots
    return rows, first, scratch, counters


def _launch(problems: list[WeightGrad]) -> None:
    dtype = problems[0].dy.dtype
    block_m, block_n, block_k, warps = _TILES[dtype]
    rows, programs, scratch, counters = _meta(problems, (block_m, block_n, block_k))
    if programs == 0:
        return
    device = problems[0].dy.device
    meta = _table(rows, device)
    # a slot a problem does not have gets a pointer of the right type that no program reads (masked off)
    xs = tuple(q.dy if q.x is None else q.x for q in problems)
    dws = tuple(q.db if q.dw is None else q.dw for q in problems)
    dbs = tuple(q.dw if q.db is None else q.db for q in problems)
    _weight_grad_kernel[(programs,)](meta, xs, tuple(q.dy for q in problems), dws, dbs,
                                     _split.scratch(device, torch.float32, scratch),
                                     _split.scratch(device, torch.int32, counters),
                                     P=len(problems), BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
                                     DOT_PRECISION=dot_precision(dtype), UPCAST=INTERPRET and dtype == torch.bfloat16,
                                     num_warps=warps, **pdl(meta))


# A step's table depends only on its shapes and strides: made once per distinct table and device, kept
# for good (a captured graph replays its launch with that very tensor; there are a handful per model).
_TABLES: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def _table(rows: list[int], device: torch.device) -> torch.Tensor:
    key = (device, tuple(rows))
    if key in _TABLES:
        return _TABLES[key][1]
    host = torch.tensor(rows, dtype=torch.int64)
    if device.type == "cuda":  # page-locked: an asynchronous copy, which a CUDA graph capture may hold
        host = host.pin_memory()
    table = host, host.to(device, non_blocking=True)
    if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        # a captured copy fills the table only when the graph replays: the graph's alone, never shared
        _CAPTURED.append(table)
    else:
        _TABLES[key] = table
    return table[1]


_CAPTURED: list[tuple[torch.Tensor, torch.Tensor]] = []


def _check(q: WeightGrad) -> None:
    x, dy, dw, db, _ = q
    if x is None or dw is None:
        return _check_sum(q)
    check_dtype("linear_weight_grads: x", x, SUPPORTED_DTYPES)
    lead = x.shape[:-2]
    if x.dim() not in (2, 3) or dy.dtype != x.dtype or dy.shape[:-1] != x.shape[:-1]:
        raise ValueError(f"linear_weight_grads: x (M, K) / (R, M, K) and dy (M, N) / (R, M, N) of one dtype; got "
                         f"{tuple(x.shape)} {x.dtype}, {tuple(dy.shape)} {dy.dtype}")
    if x.stride(-1) != 1 or dy.stride(-1) != 1:
        raise ValueError("linear_weight_grads: x and dy need contiguous rows (last stride 1)")
    want = (*lead, dy.shape[-1], x.shape[-1])
    if dw.dtype != torch.float32 or tuple(dw.shape) != want or dw.stride()[-2:] != (x.shape[-1], 1):
        raise ValueError(f"linear_weight_grads: dw must be float32 {want}, contiguous per run; got "
                         f"{dw.dtype} {tuple(dw.shape)}")
    if db is not None and (db.dtype != torch.float32 or tuple(db.shape) != want[:-1] or db.stride(-1) != 1):
        raise ValueError(f"linear_weight_grads: db must be float32 {want[:-1]}; got {db.dtype} {tuple(db.shape)}")


def _check_sum(q: WeightGrad) -> None:
    x, dy, dw, db, _ = q
    check_dtype("linear_weight_grads: dy", dy, SUPPORTED_DTYPES)
    if x is not None or dw is not None or db is None:
        raise ValueError("linear_weight_grads: x and dw are both given, or both None for a sum alone (db given)")
    if dy.dim() not in (2, 3) or dy.stride(-1) != 1:
        raise ValueError(f"linear_weight_grads: a sum's dy is (M, N) or (R, M, N) with contiguous rows; got "
                         f"{tuple(dy.shape)}")
    lead, n = tuple(dy.shape[:-2]), dy.shape[-1]
    if db.dtype != torch.float32 or db.shape[:-1] != lead or db.shape[-1] < n or db.stride(-1) != 1:
        raise ValueError(f"linear_weight_grads: a sum's db must be float32 {(*lead, n)} (or wider: zeros past "
                         f"dy's columns); got {db.dtype} {tuple(db.shape)}")


def linear_weight_grads_reference(problems: Sequence[WeightGrad]) -> None:
    """The executable spec: dw (+)= dyᵀ x and db (+)= Σ dy, per problem, in PyTorch ops (fp32 sums); a sum's
    db wider than dy gets zeros past dy's columns (or keeps them, accumulating)."""
    for x, dy, dw, db, acc in problems:
        if x is not None:
            g = dy.float().transpose(-1, -2) @ x.float()
            dw.add_(g) if acc else dw.copy_(g)
        if db is not None:
            n = dy.shape[-1]
            s = dy.float().sum(-2)
            db[..., :n].add_(s) if acc else db[..., :n].copy_(s)
            if not acc:
                db[..., n:].zero_()


def linear_weight_grads(problems: Sequence[WeightGrad]) -> None:
    """Writes (or adds) each problem's dw = dyᵀ x and db = Σ_m dy; see the module docstring."""
    problems = [WeightGrad(*q) for q in problems]
    for q in problems:
        _check(q)
    if not problems:
        return
    if not use_triton(*(t for q in problems for t in q[:4] if t is not None)):
        return linear_weight_grads_reference(problems)
    by_dtype: dict[torch.dtype, list[WeightGrad]] = {}
    for q in problems:
        by_dtype.setdefault(q.dy.dtype, []).append(q)
    for group in by_dtype.values():
        group.sort(key=lambda q: -q.dy[..., 0].numel())  # the most rows (and runs) first
        for i in range(0, len(group), MAX_PROBLEMS):
            _launch(group[i:i + MAX_PROBLEMS])


def compile_specs() -> list[CompileSpec]:
    """Every configuration the launcher can pick: operand dtype x number of problems x dot precision."""
    specs = []
    for dtype in SUPPORTED_DTYPES:
        block_m, block_n, block_k, warps = _TILES[dtype]
        ty = SIGNATURE_DTYPES[dtype]
        for precision in (("tf32x3", "tf32") if dtype == torch.float32 else ("tf32",)):
            for p in range(1, MAX_PROBLEMS + 1):
                sig = {"META": "*i64"}
                for name, t in (("X", ty), ("DY", ty), ("DW", "fp32"), ("DB", "fp32")):
                    sig[name] = (f"*{t}",) * p  # a tuple: one pointer per problem
                sig.update(SCRATCH="*fp32", COUNTER="*i32")
                sig.update(P="constexpr", BLOCK_M="constexpr", BLOCK_N="constexpr", BLOCK_K="constexpr",
                           DOT_PRECISION="constexpr", UPCAST="constexpr")
                specs.append(CompileSpec(
                    name=f"weight_grads[P={p},{ty},{precision}]", fn=_weight_grad_kernel, signature=sig,
                    constexprs=dict(P=p, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, DOT_PRECISION=precision,
                                    UPCAST=False),
                    num_warps=warps, tensor_cores=True))
    return specs
