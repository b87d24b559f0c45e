"""LayerNorm over the last dimension, optionally fused with the residual add: ``y = LN(x + residual)``.

``layer_norm(x, weight, bias, eps=1e-5, residual=None)``. The post-LN encoder calls LayerNorm three
times per layer, twice right after a residual add (``LN(attn_out + x)``, ``LN(ffn_out + h)``).
Unfused, the add writes ``x + r`` to memory and LayerNorm reads it back: per element of the
activation, 2 reads + 1 write for the add, then 1 read + 1 write for the norm (5 accesses); fused,
2 reads + 1 write (3 accesses), i.e. 40 % fewer bytes and one launch instead of two. For the paper's
IMDB step ((128*256) x 128 fp32 activations, 16.8 MB each) that is 33.6 MB saved per fused call in
the forward pass, and likewise in the backward (the sum is recomputed from ``x`` and ``residual``
rather than stored, which costs the same bytes as storing it and saves the memory).

Arithmetic: fp32 statistics (mean and a two-pass variance over the row held in registers), fp32
normalisation and affine, one rounding to the input dtype at the output. ``x`` and ``residual`` are
fp32, bf16 or fp16 (the same dtype); ``weight`` and ``bias`` any of those three (read as fp32) or
``None`` (weight 1, bias 0); hidden size N from 1 to 4096 (``MAX_N``).

Packed runs (weight/bias (R, N) instead of (N,)): R independent models trained as one stacked model
(one launch instead of R); x and residual are (R, ..., N) and run r's rows ``x[r]`` are normalised with
``weight[r]``, ``bias[r]``; the weight/bias gradients are (R, N), each run's own sums. The optimiser
keeps the runs run-major in one flat buffer, so a packed weight is a view whose run axis has any stride
(each row contiguous): the kernels read an fp32 one in place, row r at ``weight + r * stride(0)``, no
copy (a bf16/fp16 one is converted, as in the solo form). A constexpr ``PACKED`` selects it, so the solo
kernels compile to the same code as before.

Kernels:
- forward: a tile of ``BLOCK_M`` rows x ``BLOCK_N`` (next power of two >= N, at least 32) columns
  per program, whole rows in registers; saves the per-row mean and 1/std (8 bytes per row). Packed:
  each run's rows are tiled on their own (a tile never straddles runs, so a program loads one weight
  row; the cost is at most one partial tile per run).
- backward: a fixed number of programs (a few per SM), each walking a contiguous range of rows in
  tiles; it writes dx for its rows and its own partial sums of dweight (sum dy * xhat) and dbias
  (sum dy) to a (2, programs, N) fp32 buffer that one ``sum`` reduces afterwards -- no atomics, so
  the result is deterministic. ``dresidual`` is ``dx`` (the same tensor; autograd copes with aliasing).
  Packed: the programs are split evenly over the runs, each walking rows of one run only, and the
  partials are (R, programs per run, N), summed per run.

CUDA tensors run Triton; CPU tensors run ``layer_norm_reference`` (or Triton under
``TRITON_INTERPRET=1``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from ._compile import SIGNATURE_DTYPES, CompileSpec
from ._dispatch import check_dtype, use_triton
from ._pdl import enter, pdl

SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
MAX_N = 4096
BLOCK_NS = tuple(2 ** k for k in range(5, 13))  # 32 ... 4096: every BLOCK_N the dispatcher can pick


# num_warps per BLOCK_N, forward and backward: spill-free on sm_80 and sm_90 under Triton 3.6 (the GPU
# image's) and 3.9 (``python -m kernels._compile``). ptxas spilled the backward at 8 elements per thread
# for BLOCK_N 128 and 4096, at 16 warps for BLOCK_N 32 on sm_90, and (Triton 3.6, sm_90, bf16/fp16)
# at 16 warps for BLOCK_N 512, where it capped itself at 40 registers; 8 warps there is clean everywhere.
_FWD_WARPS = {32: 8, 64: 16, 128: 16, 256: 16, 512: 16, 1024: 16, 2048: 16, 4096: 32}
_BWD_WARPS = {32: 8, 64: 16, 128: 16, 256: 16, 512: 8, 1024: 16, 2048: 16, 4096: 32}


def _config(n: int) -> tuple[int, int, int, int]:
    """(BLOCK_N, BLOCK_M, forward num_warps, backward num_warps) for hidden size ``n``: tiles of at
    least 2048 elements (whole rows)."""
    block_n = max(32, triton.next_power_of_2(n))
    block_m = max(1, 2048 // block_n)
    return block_n, block_m, _FWD_WARPS[block_n], _BWD_WARPS[block_n]


def _empty(shape, dtype, device) -> torch.Tensor:
    """Every output buffer the kernels fill comes from here (tests poison it to catch unwritten memory)."""
    return torch.empty(shape, dtype=dtype, device=device)


@triton.jit
def _layer_norm_fwd_kernel(X, R, W, B, Y, MEAN, RSTD, M, N, eps, r_row_stride,
                           rows_per_run, tiles_per_run, w_run_stride, b_run_stride,
                           BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
                           PACKED: tl.constexpr, R_STRIDED: tl.constexpr, PDL: tl.constexpr = False):
    enter(PDL)
    pid = tl.program_id(0)
    if PACKED:  # tiles_per_run programs per run; a tile never straddles two runs
        run = pid // tiles_per_run
        run_start = run * rows_per_run
        rows = run_start + (pid - run * tiles_per_run) * BLOCK_M + tl.arange(0, BLOCK_M)
        row_end = run_start + rows_per_run
        W += run.to(tl.int64) * w_run_stride
        B += run.to(tl.int64) * b_run_stride
    else:  # rows_per_run, tiles_per_run and the run strides are unused
        rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
        row_end = M
    cols = tl.arange(0, BLOCK_N)
    row_mask = rows < row_end
    col_mask = cols < N
    mask = row_mask[:, None] & col_mask[None, :]
    offs = rows.to(tl.int64)[:, None] * N + cols[None, :]

    z = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        r_offs = rows.to(tl.int64)[:, None] * r_row_stride + cols[None, :] if R_STRIDED else offs
        z += tl.load(R + r_offs, mask=mask, other=0.0).to(tl.float32)
    mean = tl.sum(z, axis=1) / N
    d = tl.where(mask, z - mean[:, None], 0.0)
    var = tl.sum(d * d, axis=1) / N
    rstd = tl.div_rn(1.0, tl.sqrt_rn(var + eps))

    w = tl.load(W + cols, mask=col_mask, other=0.0)
    b = tl.load(B + cols, mask=col_mask, other=0.0)
    y = d * rstd[:, None] * w[None, :] + b[None, :]
    tl.store(Y + offs, y.to(Y.dtype.element_ty), mask=mask)
    tl.store(MEAN + rows, mean, mask=row_mask)
    tl.store(RSTD + rows, rstd, mask=row_mask)


@triton.jit
def _layer_norm_bwd_kernel(X, R, W, DY, DX, MEAN, RSTD, DW_PART, DB_PART, M, N, r_row_stride,
                           rows_per_program, rows_per_run, programs_per_run, w_run_stride,
                           BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
                           PACKED: tl.constexpr, R_STRIDED: tl.constexpr, PDL: tl.constexpr = False):
    enter(PDL)
    pid = tl.program_id(0)
    if PACKED:  # programs_per_run programs per run, each within its run: partials never mix runs
        run = pid // programs_per_run
        W += run.to(tl.int64) * w_run_stride
    cols = tl.arange(0, BLOCK_N)
    col_mask = cols < N
    w = tl.load(W + cols, mask=col_mask, other=0.0)
    dw_acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    db_acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    if PACKED:
        run_start = run * rows_per_run
        row_start = run_start + (pid - run * programs_per_run) * rows_per_program
        row_end = tl.minimum(row_start + rows_per_program, run_start + rows_per_run)
    else:  # rows_per_run, programs_per_run and w_run_stride are unused
        row_start = pid * rows_per_program
        row_end = tl.minimum(row_start + rows_per_program, M)
    for r0 in range(row_start, row_end, BLOCK_M):
        rows = r0 + tl.arange(0, BLOCK_M)
        row_mask = rows < row_end
        mask = row_mask[:, None] & col_mask[None, :]
        offs = rows.to(tl.int64)[:, None] * N + cols[None, :]
        z = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
        if HAS_RESIDUAL:
            r_offs = rows.to(tl.int64)[:, None] * r_row_stride + cols[None, :] if R_STRIDED else offs
            z += tl.load(R + r_offs, mask=mask, other=0.0).to(tl.float32)
        mean = tl.load(MEAN + rows, mask=row_mask, other=0.0)
        rstd = tl.load(RSTD + rows, mask=row_mask, other=0.0)
        xhat = tl.where(mask, (z - mean[:, None]) * rstd[:, None], 0.0)
        dy = tl.load(DY + offs, mask=mask, other=0.0).to(tl.float32)
        wdy = dy * w[None, :]
        c1 = tl.sum(xhat * wdy, axis=1) / N
        c2 = tl.sum(wdy, axis=1) / N
        dx = (wdy - (xhat * c1[:, None] + c2[:, None])) * rstd[:, None]
        tl.store(DX + offs, dx.to(DX.dtype.element_ty), mask=mask)
        dw_acc += tl.sum(dy * xhat, axis=0)
        db_acc += tl.sum(dy, axis=0)
    tl.store(DW_PART + pid * N + cols, dw_acc, mask=col_mask)
    tl.store(DB_PART + pid * N + cols, db_acc, mask=col_mask)


def _num_bwd_programs(device: torch.device, tiles: int, runs: int = 1) -> int:
    """Backward programs per run: a few per SM in all (``runs`` share them), at most one per tile."""
    if device.type == "cuda":
        sms = torch.cuda.get_device_properties(device).multi_processor_count
        return max(1, min(tiles, triton.cdiv(4 * sms, runs)))
    # the interpreter: a few programs, so the cross-program reduction is exercised
    return max(1, min(tiles, triton.cdiv(4, runs)))


def _affine_fp32(weight, bias, n, device):
    w = torch.ones(n, dtype=torch.float32, device=device) if weight is None else weight.float().contiguous()
    b = torch.zeros(n, dtype=torch.float32, device=device) if bias is None else bias.float().contiguous()
    return w, b


def _packed_affine_fp32(t, n, fill, device):
    """A packed (R, N) weight or bias as the kernels read it, fp32 row ``r`` at ``t + r * run_stride``:
    (tensor, run_stride). An fp32 view with contiguous rows (the optimiser's flat buffer) is used in
    place, whatever its run stride; ``None`` is one shared row of ``fill`` (run stride 0)."""
    if t is None:
        return torch.full((n,), fill, dtype=torch.float32, device=device), 0
    t = t.float()
    if n > 1 and t.stride(1) != 1:
        t = t.contiguous()
    return t, t.stride(0)


def weight_rows(weight: torch.Tensor) -> tuple[torch.Tensor, int]:
    """A LayerNorm weight (N,) or a pack's (R, N) as the backward kernels read it: fp32 rows and their run stride
    (0 for one row)."""
    if weight.dim() == 2:
        return _packed_affine_fp32(weight, weight.shape[-1], 1.0, weight.device)
    return weight.float().contiguous(), 0


# A residual's rows are read with their own stride (the last layer's residual is the readout row of each
# sequence, a strided slice: no copy) from BLOCK_N 64 on. At BLOCK_N 32 Triton 3.9's sm_90 backward spilled
# 8 B (fp32, residual, packed) when x and the residual both took a runtime row stride, so narrow rows are
# copied contiguous as before, and x always is.
_MIN_STRIDED_BLOCK_N = 64


def _r_strided(has_residual: bool, block_n: int) -> bool:
    """Whether the kernels read the residual with its own row stride (the R_STRIDED constexpr)."""
    return has_residual and block_n >= _MIN_STRIDED_BLOCK_N


def _residual_rows(r: torch.Tensor, block_n: int) -> torch.Tensor:
    r2 = r.reshape(-1, r.shape[-1])
    strided = _r_strided(True, block_n) and (r2.stride(-1) == 1 or r2.shape[-1] == 1)
    return r2 if strided else r2.contiguous()


def _is_packed(weight, bias) -> bool:
    return any(t is not None and t.dim() == 2 for t in (weight, bias))


class _LayerNormFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, residual, eps):
        n = x.shape[-1]
        block_n, block_m, warps, _ = _config(n)
        x2 = x.reshape(-1, n).contiguous()
        r2 = None if residual is None else _residual_rows(residual, block_n)
        m = x2.shape[0]
        packed = _is_packed(weight, bias)
        if packed:  # x is (R, ..., N): run r's rows are the contiguous rows [r * m / R, (r + 1) * m / R)
            runs = x.shape[0]
            rows_per_run = m // runs
            w, w_stride = _packed_affine_fp32(weight, n, 1.0, x.device)
            b, b_stride = _packed_affine_fp32(bias, n, 0.0, x.device)
            tiles_per_run = triton.cdiv(rows_per_run, block_m)
            grid = runs * tiles_per_run
        else:  # the packed-only arguments are constants, so they add no specialisations
            runs, rows_per_run, tiles_per_run, w_stride, b_stride = 1, m, 0, 0, 0
            w, b = _affine_fp32(weight, bias, n, x.device)
            grid = triton.cdiv(m, block_m)
        y = _empty((m, n), x.dtype, x.device)
        mean = _empty((m,), torch.float32, x.device)
        rstd = _empty((m,), torch.float32, x.device)
        if m > 0:
            _layer_norm_fwd_kernel[(grid,)](
                x2, x2 if r2 is None else r2, w, b, y, mean, rstd, m, n, eps, n if r2 is None else r2.stride(0),
                rows_per_run if packed else 0, tiles_per_run, w_stride, b_stride,
                BLOCK_M=block_m, BLOCK_N=block_n, HAS_RESIDUAL=r2 is not None, PACKED=packed,
                R_STRIDED=_r_strided(r2 is not None, block_n), num_warps=warps, **pdl(x2))
        ctx.save_for_backward(x2, r2, w, mean, rstd)
        ctx.packed, ctx.runs, ctx.w_stride = packed, runs, w_stride
        ctx.has_weight, ctx.has_bias = weight is not None, bias is not None
        ctx.wdtype = None if weight is None else weight.dtype
        ctx.bdtype = None if bias is None else bias.dtype
        ctx.x_shape = x.shape
        return y.view(x.shape)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        x2, r2, w, mean, rstd = ctx.saved_tensors
        dx, dw, db = _backward(x2, r2, w, ctx.w_stride, mean, rstd, dy, ctx.runs, ctx.packed)
        dx = dx.view(ctx.x_shape)
        dw = dw.to(ctx.wdtype) if ctx.has_weight and ctx.needs_input_grad[1] else None
        db = db.to(ctx.bdtype) if ctx.has_bias and ctx.needs_input_grad[2] else None
        dres = dx if r2 is not None and ctx.needs_input_grad[3] else None
        return dx if ctx.needs_input_grad[0] else None, dw, db, dres, None


def layer_norm_backward(z: torch.Tensor, weight: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor,
                        dy: torch.Tensor, reduce: bool = True):
    """The backward of a LayerNorm whose forward ran elsewhere (``kernels.matmul_layer_norm``): its input z
    (..., N) (a pack's (R, ..., N)), weight (N,) or (R, N), and the rows' fp32 mean and 1/std as that forward
    stored them. Returns ``(dz, dweight, dbias)``, the last two fp32 and weight's shape. CUDA tensors, or the
    interpreter: the same kernel and reduction as ``layer_norm``'s backward.

    ``reduce=False`` leaves the reduction to the caller: dweight and dbias come as partial sums, (P, N) or a
    pack's (R, P, N), whose sum over P is the gradient. The trainer sums them in the launch that computes its
    linear layers' weight gradients (``kernels.WeightGrad`` without x: a sum alone), a launch fewer each."""
    if not use_triton(z, weight, mean, rstd, dy):
        dz, dw, db = layer_norm_backward_reference(z, weight, mean, rstd, dy)
        return (dz, dw, db) if reduce else (dz, dw.unsqueeze(-2), db.unsqueeze(-2))  # one partial each
    n = z.shape[-1]
    packed = weight.dim() == 2
    w, w_stride = weight_rows(weight)
    runs = weight.shape[0] if packed else 1
    dz, part = _backward_partials(z.reshape(-1, n), None, w, w_stride, mean.reshape(-1), rstd.reshape(-1), dy,
                                  runs, packed)
    if reduce:
        return (dz.view(z.shape), *_reduce(part, packed))
    return dz.view(z.shape), *(part[i] if packed else part[i, 0] for i in (0, 1))


def layer_norm_backward_reference(z, weight, mean, rstd, dy):
    """The executable spec of ``layer_norm_backward``, in fp32 PyTorch ops: with x̂ = (z - mean) · rstd and
    g = dy · weight, dz = rstd · (g - mean(g) - x̂ · mean(g · x̂)) per row, dweight = Σ dy · x̂, dbias = Σ dy
    (over every row, or each run's rows)."""
    zf, dyf = z.float(), dy.float().reshape(z.shape)
    xhat = (zf - mean.reshape(z.shape[:-1]).unsqueeze(-1)) * rstd.reshape(z.shape[:-1]).unsqueeze(-1)
    w = weight.float()
    packed = w.dim() == 2
    g = dyf * (w.reshape(w.shape[0], *[1] * (z.dim() - 2), w.shape[-1]) if packed else w)
    dz = rstd.reshape(z.shape[:-1]).unsqueeze(-1) * (g - g.mean(-1, keepdim=True)
                                                      - xhat * (g * xhat).mean(-1, keepdim=True))
    dims = tuple(range(1 if packed else 0, z.dim() - 1))
    return dz.to(z.dtype), (dyf * xhat).sum(dims), dyf.sum(dims)


def _backward(x2: torch.Tensor, r2: torch.Tensor | None, w: torch.Tensor, w_stride: int, mean: torch.Tensor,
              rstd: torch.Tensor, dy: torch.Tensor, runs: int, packed: bool):
    """The backward kernel and its partial sums' reduction, for a forward that saved x2 (M, N) (and a residual
    r2), the fp32 weight rows ``w`` (run stride ``w_stride`` when packed), and the rows' mean and 1/std:
    ``(dx (M, N), dweight, dbias)``, the last two fp32 (N,) or, packed, (R, N)."""
    dx, part = _backward_partials(x2, r2, w, w_stride, mean, rstd, dy, runs, packed)
    return (dx, *_reduce(part, packed))


def _reduce(part: torch.Tensor, packed: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """dweight and dbias, (N,) or packed (R, N), from the partials (2, R, P, N): one ``sum`` for both."""
    sums = part.sum(2)
    return (sums[0], sums[1]) if packed else (sums[0, 0], sums[1, 0])


def _backward_partials(x2: torch.Tensor, r2: torch.Tensor | None, w: torch.Tensor, w_stride: int,
                       mean: torch.Tensor, rstd: torch.Tensor, dy: torch.Tensor, runs: int, packed: bool):
    """The backward kernel alone: ``(dx (M, N), partials (2, R, P, N))``, dweight's then dbias's fp32 partial
    sums, P per run."""
    m, n = x2.shape
    rows_per_run = m // runs
    dy2 = dy.reshape(-1, n).contiguous()
    if dy2.dtype != x2.dtype:
        dy2 = dy2.to(x2.dtype)
    block_n, block_m, _, warps = _config(n)
    tiles = triton.cdiv(rows_per_run, block_m)
    per_run = _num_bwd_programs(x2.device, tiles, runs)
    rows_per_program = block_m * triton.cdiv(tiles, per_run)
    per_run = triton.cdiv(rows_per_run, rows_per_program) if rows_per_run > 0 else 0
    dx = _empty((m, n), x2.dtype, x2.device)
    # per run, per program partial sums: (R, programs per run, N) of dweight, then of dbias, in one
    # buffer, so that one reduction (below) serves both
    part = _empty((2, runs, max(per_run, 1), n), torch.float32, x2.device)
    dw_part, db_part = part[0], part[1]
    if per_run > 0:
        _layer_norm_bwd_kernel[(runs * per_run,)](
            x2, x2 if r2 is None else r2, w, dy2, dx, mean, rstd, dw_part, db_part, m, n,
            n if r2 is None else r2.stride(0), rows_per_program,
            rows_per_run if packed else 0, per_run if packed else 0, w_stride,
            BLOCK_M=block_m, BLOCK_N=block_n, HAS_RESIDUAL=r2 is not None, PACKED=packed,
            R_STRIDED=_r_strided(r2 is not None, block_n), num_warps=warps, **pdl(x2))
    else:
        part.zero_()
    return dx, part


def _check(x, weight, bias, residual) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() < 1:
        raise ValueError("layer_norm: x must be a tensor with at least one dimension (..., N)")
    check_dtype("layer_norm: x", x, SUPPORTED_DTYPES)
    n = x.shape[-1]
    if not 1 <= n <= MAX_N:
        raise ValueError(f"layer_norm: hidden size (last dim) {n} is unsupported; supported: 1 to {MAX_N}")
    given = [(name, t) for name, t in (("weight", weight), ("bias", bias)) if t is not None]
    for name, t in given:
        check_dtype(f"layer_norm: {name}", t, SUPPORTED_DTYPES)
        if t.dim() == 1 and tuple(t.shape) != (n,) or t.dim() == 2 and t.shape[1] != n or t.dim() not in (1, 2):
            raise ValueError(f"layer_norm: {name} has shape {tuple(t.shape)}; supported: ({n},), the last dim "
                             f"of x, or (R, {n}) for R packed runs with x of shape (R, ..., {n})")
    if len(given) == 2 and weight.dim() != bias.dim():
        raise ValueError(f"layer_norm: weight {tuple(weight.shape)} and bias {tuple(bias.shape)} must both be "
                         f"1-D (N,) or both be 2-D (R, N) (packed runs)")
    if _is_packed(weight, bias):
        runs = given[0][1].shape[0]
        if len(given) == 2 and bias.shape[0] != runs:
            raise ValueError(f"layer_norm: weight {tuple(weight.shape)} and bias {tuple(bias.shape)} disagree "
                             f"on the number of packed runs")
        if runs < 1 or x.dim() < 2 or x.shape[0] != runs:
            raise ValueError(f"layer_norm: packed runs (weight/bias of shape ({runs}, {n})) need x of shape "
                             f"({runs}, ..., {n}) with R >= 1; x has shape {tuple(x.shape)}")
    if residual is not None:
        if residual.shape != x.shape:
            raise ValueError(f"layer_norm: residual has shape {tuple(residual.shape)}; it must match "
                             f"x's shape {tuple(x.shape)}")
        if residual.dtype != x.dtype:
            raise ValueError(f"layer_norm: residual has dtype {residual.dtype}; it must match x's dtype "
                             f"{x.dtype}")


def layer_norm_reference(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                         eps: float = 1e-5, residual: torch.Tensor | None = None) -> torch.Tensor:
    """The executable spec: ``LN(x + residual)`` over the last dim, the sum and the statistics in fp32
    (fp64 inputs stay fp64), one rounding to x's dtype at the end. Differentiable by autograd.
    Packed (2-D weight/bias (R, N)): run r, ``x[r]``, normalised with ``weight[r]``, ``bias[r]`` -- a
    loop over the runs."""
    if _is_packed(weight, bias):
        return torch.stack([layer_norm_reference(x[r], None if weight is None else weight[r],
                                                 None if bias is None else bias[r], eps,
                                                 None if residual is None else residual[r])
                            for r in range(x.shape[0])])
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    z = x.to(acc) if residual is None else x.to(acc) + residual.to(acc)
    w = None if weight is None else weight.to(acc)
    b = None if bias is None else bias.to(acc)
    return F.layer_norm(z, (x.shape[-1],), w, b, eps).to(x.dtype)


def layer_norm(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float = 1e-5,
               residual: torch.Tensor | None = None) -> torch.Tensor:
    """``LayerNorm(x + residual)`` over the last dim (``residual`` optional), differentiable in x,
    weight, bias and residual. Output has x's dtype and shape. weight/bias (N,), or (R, N) for R packed
    runs: then x (and residual) is (R, ..., N), run r normalised with weight[r], bias[r], and the
    weight/bias gradients are (R, N), per run."""
    _check(x, weight, bias, residual)
    if use_triton(x, weight, bias, residual):
        return _LayerNormFn.apply(x, weight, bias, residual, float(eps))
    return layer_norm_reference(x, weight, bias, eps, residual)


def compile_specs() -> list[CompileSpec]:
    """Every configuration ``layer_norm`` can launch: forward and backward x dtype x BLOCK_N x residual
    x packed runs or not."""
    specs = []
    for block_n in BLOCK_NS:
        _, block_m, fwd_warps, bwd_warps = _config(block_n)
        for dtype, ty in SIGNATURE_DTYPES.items():
            for has_res in (False, True):
                for packed in (False, True):
                    consts = dict(BLOCK_M=block_m, BLOCK_N=block_n, HAS_RESIDUAL=has_res, PACKED=packed,
                                  R_STRIDED=_r_strided(has_res, block_n))
                    tag = (f"BLOCK_M={block_m},BLOCK_N={block_n},{ty}{',residual' if has_res else ''}"
                           f"{',packed' if packed else ''}")
                    specs.append(CompileSpec(
                        name=f"layer_norm_fwd[{tag}]", fn=_layer_norm_fwd_kernel,
                        signature=dict(X=f"*{ty}", R=f"*{ty}", W="*fp32", B="*fp32", Y=f"*{ty}", MEAN="*fp32",
                                       RSTD="*fp32", M="i32", N="i32", eps="fp32", r_row_stride="i32",
                                       rows_per_run="i32",
                                       tiles_per_run="i32", w_run_stride="i32", b_run_stride="i32",
                                       BLOCK_M="constexpr", BLOCK_N="constexpr", HAS_RESIDUAL="constexpr",
                                       PACKED="constexpr", R_STRIDED="constexpr"),
                        constexprs=consts, num_warps=fwd_warps))
                    specs.append(CompileSpec(
                        name=f"layer_norm_bwd[{tag}]", fn=_layer_norm_bwd_kernel,
                        signature=dict(X=f"*{ty}", R=f"*{ty}", W="*fp32", DY=f"*{ty}", DX=f"*{ty}", MEAN="*fp32",
                                       RSTD="*fp32", DW_PART="*fp32", DB_PART="*fp32", M="i32", N="i32",
                                       r_row_stride="i32", rows_per_program="i32", rows_per_run="i32",
                                       programs_per_run="i32",
                                       w_run_stride="i32", BLOCK_M="constexpr", BLOCK_N="constexpr",
                                       HAS_RESIDUAL="constexpr", PACKED="constexpr", R_STRIDED="constexpr"),
                        constexprs=consts, num_warps=bwd_warps))
    return specs
