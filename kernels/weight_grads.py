"""Every linear layer's weight and bias gradient of a step in one launch: ``linear_weight_grads(problems)``.

Autograd computes a linear layer's backward as three kernels: ``dx = dy W`` (which the layer below
waits for), ``dW = dyᵀ x`` and ``db = Σ dy`` (which nothing in the backward waits for). In a small
model's step every one of them is a launch too short to hide, and the weight gradients of all the
layers are independent of each other. So the trainer's linear layers can leave theirs for later
(``grokfast_train/models/deferred.py``, ``deferred()``): the backward computes the ``dx`` chain
alone, and then this kernel computes every layer's ``dW`` and ``db`` at once. A program owns one
(BLOCK_N, BLOCK_K) tile of one layer's (one run's) ``dW``: it walks the M rows, ``acc += dyᵀ x`` on the
tensor cores, and the programs of a layer's first column of tiles also sum ``dy`` for ``db``. Every
element is written by exactly one program, in a fixed order: deterministic, no atomics.

A problem is ``WeightGrad(x, dy, dw, db=None, accumulate=False)``:
- ``x`` (M, K) or (R, M, K) and ``dy`` (M, N) or (R, M, N), float32 or bfloat16 (both the same), rows of
  any stride, each row contiguous;
- ``dw`` float32 (N, K) or (R, N, K), contiguous per run, gets ``dyᵀ x`` (``accumulate``: added to it);
- ``db`` float32 (N,) or (R, N), or None, gets ``Σ_m dy`` (or has it added).
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

from ._compile import SIGNATURE_DTYPES, CompileSpec
from ._dispatch import INTERPRET, check_dtype, dot_precision, use_triton

MAX_PROBLEMS = 8
SUPPORTED_DTYPES = (torch.float32, torch.bfloat16)
_META = 12  # ints per problem in the launch's table (see _meta)
# (BLOCK_M, BLOCK_N, BLOCK_K, warps) per operand dtype
_TILES = {torch.float32: (32, 32, 32, 4), torch.bfloat16: (32, 32, 32, 4)}


class WeightGrad(NamedTuple):
    x: torch.Tensor
    dy: torch.Tensor
    dw: torch.Tensor
    db: torch.Tensor | None = None
    accumulate: bool = False


@triton.jit
def _pick(p, a0, a1, a2, a3, a4, a5, a6, a7, P: tl.constexpr):
    """a_p, for a runtime p < P (the slots from P on are never read)."""
    a = a0
    if P > 1:
        if p == 1:
            a = a1
    if P > 2:
        if p == 2:
            a = a2
    if P > 3:
        if p == 3:
            a = a3
    if P > 4:
        if p == 4:
            a = a4
    if P > 5:
        if p == 5:
            a = a5
    if P > 6:
        if p == 6:
            a = a6
    if P > 7:
        if p == 7:
            a = a7
    return a


@triton.jit
def _weight_grad_kernel(META, X0, X1, X2, X3, X4, X5, X6, X7, DY0, DY1, DY2, DY3, DY4, DY5, DY6, DY7,
                        DW0, DW1, DW2, DW3, DW4, DW5, DW6, DW7, DB0, DB1, DB2, DB3, DB4, DB5, DB6, DB7,
                        P: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                        DOT_PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    pid = tl.program_id(0)
    p = pid * 0  # which problem: the last whose first program is <= pid (the table lists them in order)
    for i in tl.static_range(1, P):
        p = tl.where(pid >= tl.load(META + i * 12 + 10), i, p)
    meta = META + p * 12
    m, n, k = tl.load(meta + 0), tl.load(meta + 1), tl.load(meta + 2)
    x_rs, x_ms, dy_rs, dy_ms = tl.load(meta + 4), tl.load(meta + 5), tl.load(meta + 6), tl.load(meta + 7)
    dw_rs, db_rs, first, flags = tl.load(meta + 8), tl.load(meta + 9), tl.load(meta + 10), tl.load(meta + 11)
    X = _pick(p, X0, X1, X2, X3, X4, X5, X6, X7, P)
    DY = _pick(p, DY0, DY1, DY2, DY3, DY4, DY5, DY6, DY7, P)
    DW = _pick(p, DW0, DW1, DW2, DW3, DW4, DW5, DW6, DW7, P)
    DB = _pick(p, DB0, DB1, DB2, DB3, DB4, DB5, DB6, DB7, P)

    tiles_k = tl.cdiv(k, BLOCK_K)
    tiles = tl.cdiv(n, BLOCK_N) * tiles_k
    local = pid - first
    run = (local // tiles).to(tl.int64)
    tile_n, tile_k = (local % tiles) // tiles_k, (local % tiles) % tiles_k
    offs_n = tile_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tile_k * BLOCK_K + tl.arange(0, BLOCK_K)
    rows = tl.arange(0, BLOCK_M)
    X += run * x_rs
    DY += run * dy_rs

    acc = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
    bsum = tl.zeros([BLOCK_N], dtype=tl.float32)
    for m0 in range(0, m, BLOCK_M):
        r = m0 + rows
        r_ok = (r < m)[:, None]
        dy = tl.load(DY + r.to(tl.int64)[:, None] * dy_ms + offs_n[None, :], mask=r_ok & (offs_n < n)[None, :],
                     other=0.0)
        x = tl.load(X + r.to(tl.int64)[:, None] * x_ms + offs_k[None, :], mask=r_ok & (offs_k < k)[None, :],
                    other=0.0)
        if UPCAST:  # the interpreter's bf16 dot multiplies bit patterns; bf16 products are exact in fp32
            dy, x = dy.to(tl.float32), x.to(tl.float32)
        acc = tl.dot(tl.trans(dy), x, acc, input_precision=DOT_PRECISION)
        bsum += tl.sum(dy.to(tl.float32), axis=0)

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
                bsum += tl.load(bout, mask=offs_n < n, other=0.0)
            tl.store(bout, bsum, mask=offs_n < n)


def _rows(t: torch.Tensor) -> tuple[int, int]:
    """(run stride, row stride) of a (M, C) or (R, M, C) operand."""
    return (0, t.stride(0)) if t.dim() == 2 else (t.stride(0), t.stride(1))


def _meta(problems: Sequence[WeightGrad], tiles: tuple[int, int, int]) -> tuple[list[int], int]:
    """The launch's table, one row of ``_META`` ints per problem, and its number of programs."""
    _, block_n, block_k = tiles
    rows, first = [], 0
    for x, dy, dw, db, acc in problems:
        runs = 1 if x.dim() == 2 else x.shape[0]
        m, k, n = x.shape[-2], x.shape[-1], dy.shape[-1]
        rows += [m, n, k, runs, *_rows(x), *_rows(dy), 0 if dw.dim() == 2 else dw.stride(0),
                 0 if db is None or db.dim() == 1 else db.stride(0), first, (db is not None) | (2 * acc)]
        first += runs * triton.cdiv(n, block_n) * triton.cdiv(k, block_k)
    return rows, first


def _launch(problems: list[WeightGrad]) -> None:
    dtype = problems[0].x.dtype
    block_m, block_n, block_k, warps = _TILES[dtype]
    rows, programs = _meta(problems, (block_m, block_n, block_k))
    if programs == 0:
        return
    meta = _table(rows, problems[0].x.device)
    pad = MAX_PROBLEMS - len(problems)
    xs, dys, dws = ([getattr(q, f) for q in problems] + [getattr(problems[0], f)] * pad for f in ("x", "dy", "dw"))
    dbs = [q.db if q.db is not None else q.dw for q in problems] + [problems[0].dw] * pad
    _weight_grad_kernel[(programs,)](meta, *xs, *dys, *dws, *dbs, P=len(problems), BLOCK_M=block_m, BLOCK_N=block_n,
                                     BLOCK_K=block_k, DOT_PRECISION=dot_precision(dtype),
                                     UPCAST=INTERPRET and dtype == torch.bfloat16, num_warps=warps)


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


def linear_weight_grads_reference(problems: Sequence[WeightGrad]) -> None:
    """The executable spec: dw (+)= dyᵀ x and db (+)= Σ dy, per problem, in PyTorch ops (fp32 sums)."""
    for x, dy, dw, db, acc in problems:
        g = dy.float().transpose(-1, -2) @ x.float()
        dw.add_(g) if acc else dw.copy_(g)
        if db is not None:
            s = dy.float().sum(-2)
            db.add_(s) if acc else db.copy_(s)


def linear_weight_grads(problems: Sequence[WeightGrad]) -> None:
    """Writes (or adds) each problem's dw = dyᵀ x and db = Σ_m dy; see the module docstring."""
    problems = [WeightGrad(*q) for q in problems]
    for q in problems:
        _check(q)
    if not problems:
        return
    if not use_triton(*(t for q in problems for t in q[:4])):
        return linear_weight_grads_reference(problems)
    by_dtype: dict[torch.dtype, list[WeightGrad]] = {}
    for q in problems:
        by_dtype.setdefault(q.x.dtype, []).append(q)
    for group in by_dtype.values():
        group.sort(key=lambda q: -q.x[..., 0].numel())  # the most rows (and runs) first
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
                    sig.update({f"{name}{i}": f"*{t}" for i in range(MAX_PROBLEMS)})
                sig.update(P="constexpr", BLOCK_M="constexpr", BLOCK_N="constexpr", BLOCK_K="constexpr",
                           DOT_PRECISION="constexpr", UPCAST="constexpr")
                specs.append(CompileSpec(
                    name=f"weight_grads[P={p},{ty},{precision}]", fn=_weight_grad_kernel, signature=sig,
                    constexprs=dict(P=p, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, DOT_PRECISION=precision,
                                    UPCAST=False),
                    num_warps=warps, tensor_cores=True))
    return specs
