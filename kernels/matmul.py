"""The linear layers' products on the tensor cores, one launch for a whole pack: ``matmul(a, b, bias=None)``.

``c = a @ b (+ bias)`` for ``a`` (M, K) and ``b`` (K, N), or a pack's ``a`` (R, M, K) and ``b`` (R, K, N):
R products in one launch. A linear layer's forward is ``matmul(x, Wᵀ, b)`` and its input gradient
``matmul(dy, W)``; both read ``W`` where it is (``Wᵀ`` is a strided view), so no operand is copied.

Why not cuBLAS: the paper's setting is fp32, and PyTorch's fp32 products (TF32 off, its default) run
on the CUDA cores. A pack's run-step is mostly such products (BENCHMARKS.md, the H200's modular pack:
~90 µs per run, ~13 TFLOP/s). Here fp32 operands follow PyTorch's fp32-matmul switch, as the attention
and weight-gradient kernels do: "tf32x3" (each operand split into a TF32 high part and remainder,
three MMAs: about fp32's accuracy, on the tensor cores) unless TF32 is allowed. bf16 operands (autocast)
multiply directly. The accumulator is fp32; ``c`` has ``a``'s dtype and is contiguous.

A program owns one (BLOCK_M, BLOCK_N) tile of one run's ``c`` and walks K; every element is written by
one program, no atomics. The bias (fp32 or ``a``'s dtype; (N,) or (R, N), any run stride) is added to
the fp32 accumulator before the one rounding.

``matmul(..., act="gelu"|"gelu_tanh"|"tanh")`` also applies an activation in the same launch -- the FFN's
GELU (erf or tanh form), the encoder pooler's tanh -- returning the product too, and ``matmul_act_grad``
multiplies the incoming gradient by the activation's derivative as it loads it (see kernels/README.md).

CUDA tensors run Triton; CPU tensors run ``matmul_reference`` (or Triton under ``TRITON_INTERPRET=1``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from ._compile import SIGNATURE_DTYPES, CompileSpec
from ._dispatch import INTERPRET, check_dtype, dot_precision, use_triton
from ._pdl import enter, pdl
from .fused_layer_norm import _affine_fp32, _packed_affine_fp32, layer_norm_backward_reference, weight_rows

SUPPORTED_DTYPES = (torch.float32, torch.bfloat16)
# (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages) per operand mode: spill-free for sm_80 and sm_90 under
# Triton 3.6 and 3.9 (``python -m kernels._compile``). Not yet timed on a GPU. tf32x3 holds each operand
# split in two: at 4 warps Triton 3.9's sm_80 build spilled 8 B. GELU's gradient on the way in spilled up
# to 248 B at these tiles double-buffered; single-buffered at half the depth, with the addends and a float32
# c of the fused input gradient, each 64 x 64 tile at 4 or 8 warps spilled 8-16 B in some mode under one
# Triton or the other: these are the tiles that spilled in none.
_TILES = {"tf32x3": (64, 64, 32, 8, 2), "tf32": (64, 64, 32, 4, 2), "16bit": (64, 64, 32, 4, 2)}
_ACT_GRAD_TILES = {"tf32x3": (64, 32, 16, 4, 1), "tf32": (32, 64, 16, 4, 1), "16bit": (32, 64, 16, 4, 1)}
# matmul's pair (two K loops, one after the other): double-buffered, every mode's tiles spilled 8-120 B on sm_80
# (both Tritons); single-buffered at 8 warps none did (at 4 warps, up to 64 B under Triton 3.6).
_PAIR_TILES = {"tf32x3": (64, 64, 32, 8, 1), "tf32": (64, 64, 32, 8, 1), "16bit": (64, 64, 32, 8, 1)}
# matmul_layer_norm: (BLOCK_K, warps, stages) per mode; BLOCK_N is the row width's power of two (up to
# MAX_NORM_N) and BLOCK_M keeps the tile at 4,096 elements at most. At 4 warps the whole-row epilogue spilled
# 8-248 B in tf32 and 16-bit (sm_80 and sm_90, Triton 3.6 and 3.9); at 8 none did.
_NORM_TILES = {"tf32x3": (32, 8, 2), "tf32": (32, 8, 2), "16bit": (32, 8, 2)}
MAX_NORM_N = 256
_MAX_GRID_Y = 65535  # CUDA's limit on grid axis 1, which holds the runs


@triton.jit
def _tanh(u):
    """tanh of fp32 u to a few fp32 ulps, relative: near 0 (|u| < 1/4) its odd series to u⁹, whose next
    term is under 1e-8 of it, because there (1 - t) / (1 + t) loses the digits of 1 - t."""
    a = tl.abs(u)
    t = tl.exp(-2.0 * a)  # in (0, 1]: no overflow either side
    r = (1.0 - t) / (1.0 + t)
    a2 = a * a
    series = a * (1.0 + a2 * (-0.3333333333333333 + a2 * (0.13333333333333333 + a2 * (-0.05396825396825397
                                                                                     + a2 * 0.021869488536155203))))
    r = tl.where(a < 0.25, series, r)
    return tl.where(u < 0, -r, r)


@triton.jit
def _act(x, ACT: tl.constexpr):
    """The activation of fp32 x: ACT 1 GELU's exact (erf) form, 2 its tanh approximation (F.gelu's "none",
    "tanh"), 3 tanh."""
    if ACT == 1:
        y = 0.5 * x * (1.0 + tl.erf(x * 0.7071067811865476))
    elif ACT == 2:
        y = 0.5 * x * (1.0 + _tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)))
    else:
        y = _tanh(x)
    return y


@triton.jit
def _act_grad(x, ACT: tl.constexpr):
    """The activation's derivative at fp32 x, the one picked as in ``_act``."""
    if ACT == 1:
        g = 0.5 * (1.0 + tl.erf(x * 0.7071067811865476)) + x * 0.3989422804014327 * tl.exp(-0.5 * x * x)
    elif ACT == 2:
        t = _tanh(0.7978845608028654 * (x + 0.044715 * x * x * x))
        g = 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * 0.7978845608028654 * (1.0 + 0.134145 * x * x)
    else:
        t = _tanh(x)
        g = 1.0 - t * t
    return g


@triton.jit
def _norm_in(dy, Z, W, mask, k_ok, mean, rstd):
    """LayerNorm's backward at one (rows, K) chunk: x̂ of the stored z (0 outside the mask) and g = dy · w."""
    z = tl.load(Z, mask=mask, other=0.0).to(tl.float32)
    xhat = tl.where(mask, (z - mean[:, None]) * rstd[:, None], 0.0)
    return xhat, dy * tl.load(W, mask=k_ok, other=0.0)[None, :]


@triton.jit
def _matmul_kernel(A, B, BIAS, C, PRE, DPRE, D1, D2, LNW, LNB, MEAN, RSTD, PART, A2, B2, BIAS2, C2, A3, B3, BIAS3, C3,
                   M, N, K, M3, a_rs, a_ms, a_ks, a3_ms, b_rs, b_ks, b_ns, bias_rs, c_rs, c_ms, c3_rs, d1_rs, d1_ms,
                   d2_rs, d2_ms, ln_rs, eps,
                   HAS_BIAS: tl.constexpr, ACT_OUT: tl.constexpr, ACT_IN: tl.constexpr, ADDS: tl.constexpr,
                   NORM: tl.constexpr, NORM_IN: tl.constexpr, TWO: tl.constexpr, BLOCK_M: tl.constexpr,
                   BLOCK_N: tl.constexpr,
                   BLOCK_K: tl.constexpr, DOT_PRECISION: tl.constexpr, UPCAST: tl.constexpr, PDL: tl.constexpr = False):
    # ACT_OUT (a layer followed by an activation): C gets act(a @ b + bias) and PRE (M, N) the product itself.
    # ACT_IN (that layer's input gradient): PRE is the forward's (M, K) product, contiguous; A's tiles
    # are multiplied by act'(PRE) on the way in, and the first column of programs also writes them to
    # DPRE (M, K), the gradient the layer's weight gradient needs.
    # ADDS: D1 (and D2) are added to the fp32 accumulator before the one rounding -- gradients that meet
    # at one tensor; D1 may be C itself (C += a @ b), since each element is read and written by one program.
    # NORM (post-LN's add and normalise; one column tile holds whole rows): z = a @ b + bias + D1 goes to PRE
    # (contiguous, C's shape), C gets LayerNorm(z) with run r's LNW and LNB rows, MEAN and RSTD (R, M) the
    # statistics -- the arithmetic of fused_layer_norm's forward kernel, which its backward then reads.
    # NORM_IN (that LayerNorm's backward, then its projection's input gradient): A is dy, PRE the forward's z
    # (contiguous, A's shape), MEAN and RSTD its rows' statistics, LNW the LayerNorm's weight rows. A first
    # pass over each row gives the two means of the backward; the K loop then multiplies
    # dz = rstd (g - mean(g) - x̂ mean(g x̂)), g = dy w, as it loads it. The first column of programs writes dz
    # to DPRE and its rows' partial sums of dweight (Σ dy x̂) and dbias (Σ dy) to PART (2, R, row tiles, K),
    # fused_layer_norm's backward arithmetic, for the weight-gradient launch to sum.
    # TWO 1 (two layers reading one input, e.g. k and v): grid axis 1 holds (run, layer); layer 1's programs
    # read B2 and BIAS2 and write C2, strided as B, BIAS and C. TWO 3: a third layer too, reading its own M3
    # rows of that input (the query at the readout row: A3, rows a3_ms apart, runs a_rs), B3 and BIAS3 strided
    # as B and BIAS, writing C3 (rows c_ms apart, runs c3_rs); the grid's rows are the larger layers', and a
    # third-layer program past M3 walks no K. TWO 2 (the gradients of two such layers meeting at their input):
    # C = A @ B + A2 @ B2, A2 strided as A and B2 as B, one K loop after the other.
    enter(PDL)
    pid, run = tl.program_id(0), tl.program_id(1).to(tl.int64)
    k_stop = K
    if TWO == 1 or TWO == 3:
        layer = run % ((TWO + 3) // 2)  # (2 layers, or 3)
        run = run // ((TWO + 3) // 2)
        if layer == 1:
            B, BIAS, C = B2, BIAS2, C2
        if TWO == 3:
            if layer == 2:
                A, B, BIAS, C, M, a_ms, c_rs = A3, B3, BIAS3, C3, M3, a3_ms, c3_rs
    tiles_n = tl.cdiv(N, BLOCK_N)
    tile_n = pid % tiles_n
    offs_m = (pid // tiles_n) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tile_n * BLOCK_N + tl.arange(0, BLOCK_N)
    ks = tl.arange(0, BLOCK_K)
    m_ok, n_ok = offs_m < M, offs_n < N
    if TWO == 3:
        k_stop = tl.where((pid // tiles_n) * BLOCK_M < M, K, 0)  # (a tile of no row: nothing to multiply)
    A += run * a_rs + offs_m.to(tl.int64)[:, None] * a_ms
    B += run * b_rs + offs_n.to(tl.int64)[None, :] * b_ns

    if NORM_IN:
        LNW += run * ln_rs
        mean = tl.load(MEAN + run * M + offs_m, mask=m_ok, other=0.0)
        rstd = tl.load(RSTD + run * M + offs_m, mask=m_ok, other=0.0)
        c1 = tl.zeros([BLOCK_M], dtype=tl.float32)  # Σ g x̂, then its mean
        c2 = tl.zeros([BLOCK_M], dtype=tl.float32)  # Σ g
        for k0 in range(0, K, BLOCK_K):
            k = k0 + ks
            a_mask = m_ok[:, None] & (k < K)[None, :]
            rows = run * M * K + offs_m.to(tl.int64)[:, None] * K + k[None, :]
            dy = tl.load(A + k[None, :] * a_ks, mask=a_mask, other=0.0).to(tl.float32)
            xhat, g = _norm_in(dy, PRE + rows, LNW + k, a_mask, k < K, mean, rstd)
            c1 += tl.sum(g * xhat, axis=1)
            c2 += tl.sum(g, axis=1)
        c1, c2 = c1 / K, c2 / K
        PART += (run * tl.cdiv(M, BLOCK_M) + pid // tiles_n) * K
        part_half = tl.num_programs(1) * tl.cdiv(M, BLOCK_M) * K  # dbias's partials after dweight's

    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, k_stop, BLOCK_K):
        k = k0 + ks
        a_mask = m_ok[:, None] & (k < K)[None, :]
        a = tl.load(A + k[None, :] * a_ks, mask=a_mask, other=0.0)
        if ACT_IN:
            rows = run * M * K + offs_m.to(tl.int64)[:, None] * K + k[None, :]
            da = a.to(tl.float32) * _act_grad(tl.load(PRE + rows, mask=a_mask, other=0.0).to(tl.float32), ACT_IN)
            a = da.to(A.dtype.element_ty)
            if tile_n == 0:  # the weight gradient's dy, written once
                tl.store(DPRE + rows, a, mask=a_mask)
        if NORM_IN:
            rows = run * M * K + offs_m.to(tl.int64)[:, None] * K + k[None, :]
            dy = a.to(tl.float32)
            xhat, g = _norm_in(dy, PRE + rows, LNW + k, a_mask, k < K, mean, rstd)
            a = ((g - (xhat * c1[:, None] + c2[:, None])) * rstd[:, None]).to(A.dtype.element_ty)
            if tile_n == 0:  # dz and the LayerNorm's partial sums, written once
                tl.store(DPRE + rows, a, mask=a_mask)
                tl.store(PART + k, tl.sum(dy * xhat, axis=0), mask=k < K)
                tl.store(PART + part_half + k, tl.sum(dy, axis=0), mask=k < K)
        b = tl.load(B + k[:, None] * b_ks, mask=(k < K)[:, None] & n_ok[None, :], other=0.0)
        if UPCAST:  # the interpreter's bf16 dot multiplies bit patterns; bf16 products are exact in fp32
            a, b = a.to(tl.float32), b.to(tl.float32)
        acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)
    if TWO == 2:
        A2 += run * a_rs + offs_m.to(tl.int64)[:, None] * a_ms
        B2 += run * b_rs + offs_n.to(tl.int64)[None, :] * b_ns
        for k0 in range(0, K, BLOCK_K):
            k = k0 + ks
            a = tl.load(A2 + k[None, :] * a_ks, mask=m_ok[:, None] & (k < K)[None, :], other=0.0)
            b = tl.load(B2 + k[:, None] * b_ks, mask=(k < K)[:, None] & n_ok[None, :], other=0.0)
            if UPCAST:
                a, b = a.to(tl.float32), b.to(tl.float32)
            acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)
    if HAS_BIAS:
        acc += tl.load(BIAS + run * bias_rs + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    ok = m_ok[:, None] & n_ok[None, :]
    if ADDS >= 1:
        acc += tl.load(D1 + run * d1_rs + offs_m.to(tl.int64)[:, None] * d1_ms + offs_n[None, :], mask=ok,
                       other=0.0).to(tl.float32)
    if ADDS >= 2:
        acc += tl.load(D2 + run * d2_rs + offs_m.to(tl.int64)[:, None] * d2_ms + offs_n[None, :], mask=ok,
                       other=0.0).to(tl.float32)
    out = run * c_rs + offs_m.to(tl.int64)[:, None] * c_ms + offs_n[None, :]
    if NORM:
        tl.store(PRE + out, acc.to(PRE.dtype.element_ty), mask=ok)
        z = acc
        if PRE.dtype.element_ty != tl.float32:  # the backward normalises z as stored
            z = acc.to(PRE.dtype.element_ty).to(tl.float32)
        mean = tl.sum(z, axis=1) / N  # (z is 0 past column N: b, the bias and D1 load 0 there)
        d = tl.where(ok, z - mean[:, None], 0.0)
        rstd = tl.div_rn(1.0, tl.sqrt_rn(tl.sum(d * d, axis=1) / N + eps))
        lw = tl.load(LNW + run * ln_rs + offs_n, mask=n_ok, other=0.0)
        lb = tl.load(LNB + run * ln_rs + offs_n, mask=n_ok, other=0.0)
        acc = d * rstd[:, None] * lw[None, :] + lb[None, :]
        tl.store(MEAN + run * M + offs_m, mean, mask=m_ok)
        tl.store(RSTD + run * M + offs_m, rstd, mask=m_ok)
    if ACT_OUT:  # (C is contiguous here, and PRE has its shape)
        pre = acc.to(C.dtype.element_ty)
        tl.store(PRE + out, pre, mask=ok)
        acc = _act(pre.to(tl.float32), ACT_OUT)  # of the rounded product: act(linear(x)), composed
    tl.store(C + out, acc.to(C.dtype.element_ty), mask=ok)


def _mode(dtype: torch.dtype) -> str:
    return dot_precision(dtype) if dtype == torch.float32 else "16bit"


def _config(mode: str, act_in: int, norm_n: int = 0, pair: bool = False) -> tuple[tuple[int, int, int, int, int], str]:
    """The launch's tiles and tl.dot precision (the launcher and compile_specs share this one rule);
    ``act_in``: a gradient transformed as it is loaded (an activation's derivative, or ``matmul_layer_norm_grad``'s
    LayerNorm backward); ``norm_n``: the row width of a ``matmul_layer_norm``, whose one column tile holds whole
    rows; ``pair``: a product with ``matmul``'s pair."""
    precision = "tf32" if mode == "16bit" else mode
    if pair:
        return _PAIR_TILES[mode], precision
    if norm_n:
        block_n = max(16, triton.next_power_of_2(norm_n))
        return (min(64, 4096 // block_n), block_n, *_NORM_TILES[mode]), precision  # 64 x 64 ... 16 x 256
    return (_ACT_GRAD_TILES if act_in else _TILES)[mode], precision


def _check(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None) -> None:
    check_dtype("matmul: a", a, SUPPORTED_DTYPES)
    if a.dim() not in (2, 3) or b.dim() != a.dim() or b.dtype != a.dtype or a.shape[-1] != b.shape[-2] \
            or a.shape[:-2] != b.shape[:-2]:
        raise ValueError(f"matmul: a (M, K) / (R, M, K) and b (K, N) / (R, K, N) of one dtype; got "
                         f"{tuple(a.shape)} {a.dtype}, {tuple(b.shape)} {b.dtype}")
    if bias is not None:
        want = (*a.shape[:-2], b.shape[-1])
        if tuple(bias.shape) != want or bias.dtype not in (torch.float32, a.dtype):
            raise ValueError(f"matmul: bias must be {want}, float32 or {a.dtype}; got {tuple(bias.shape)} "
                             f"{bias.dtype}")


def _check_out(a: torch.Tensor, b: torch.Tensor, add, out: torch.Tensor | None) -> tuple[tuple, torch.dtype]:
    """``add`` as a tuple of at most two addends, and c's dtype: ``out``'s, else the addends', else a's. Every
    one of them has c's shape, c's dtype (a's, or float32) and unit stride along its last axis (rows of any
    stride)."""
    add = (add,) if isinstance(add, torch.Tensor) else tuple(add)
    shape, dtype = (*a.shape[:-1], b.shape[-1]), (out if out is not None else (*add, a)[0]).dtype
    if len(add) > 2 or dtype not in (a.dtype, torch.float32) or any(
            tuple(t.shape) != shape or t.dtype != dtype or (t.numel() > 1 and t.stride(-1) != 1)
            for t in (*add, *([] if out is None else [out]))):
        raise ValueError(f"matmul: out and up to two addends must be {shape}, {a.dtype} or float32 (one dtype), "
                         f"with unit stride along the last axis; got "
                         f"{[(tuple(t.shape), t.dtype, t.stride()) for t in (*add, *([] if out is None else [out]))]}")
    return add, dtype


# the activations after a product -> the kernel's code; ``gelu`` is F.gelu's exact form, ``gelu_tanh`` its
# approximate="tanh"
_ACT = {None: 0, "gelu": 1, "gelu_tanh": 2, "tanh": 3}


def _check_act(act: str | None) -> None:
    if act not in _ACT:
        raise ValueError(f"matmul: act must be None, 'gelu', 'gelu_tanh' or 'tanh'; got {act!r}")


def _activation(c: torch.Tensor, act: str) -> torch.Tensor:
    """The references' activation: F.gelu's (exact or tanh form) or torch.tanh."""
    return torch.tanh(c) if act == "tanh" else F.gelu(c, approximate="tanh" if act == "gelu_tanh" else "none")


def _finish(c: torch.Tensor, add: tuple, out: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """The references' epilogue: ``c + Σ add`` in float32 when c's dtype is, written to ``out``."""
    c = c.to(dtype)
    for t in add:
        c = c + t
    return c if out is None else out.copy_(c)


def matmul_reference(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None, act: str | None = None,
                     *, add=(), out: torch.Tensor | None = None):
    """The executable spec: ``a @ b (+ bias) (+ Σ add)`` in PyTorch ops, in a's dtype (or ``out``'s); with
    ``act``, ``(act(c), c)`` (F.gelu's exact or tanh form, or torch.tanh)."""
    add, dtype = _check_out(a, b, add, out)
    if bias is None:
        c = torch.matmul(a, b)
    elif a.dim() == 2:
        c = torch.addmm(bias.to(a.dtype), a, b)
    else:
        c = torch.baddbmm(bias.to(a.dtype).unsqueeze(1), a, b)
    return _finish(c, add, out, dtype) if act is None else (_activation(c, act), c)


def matmul_act_grad_reference(dy: torch.Tensor, pre: torch.Tensor, b: torch.Tensor, act: str,
                              *, add=(), out: torch.Tensor | None = None):
    """The executable spec of ``matmul_act_grad``: ``dpre = dy * act'(pre)`` (autograd's ``gelu_backward``
    or ``tanh_backward``), then ``(dpre @ b (+ Σ add), dpre)``."""
    add, dtype = _check_out(dy, b, add, out)
    if act == "tanh":
        dpre = torch.ops.aten.tanh_backward(dy, torch.tanh(pre))
    else:
        dpre = torch.ops.aten.gelu_backward(dy, pre, approximate="tanh" if act == "gelu_tanh" else "none")
    return _finish(torch.matmul(dpre, b), add, out, dtype), dpre


def _strides(t: torch.Tensor | None) -> tuple[int, int]:
    """(run stride, row stride) of an (M, N) or (R, M, N) operand; 0 for a missing one."""
    if t is None:
        return 0, 0
    return (0, t.stride(0)) if t.dim() == 2 else (t.stride(0), t.stride(1))


def _launch(a, b, bias, c, pre, dpre, act_out, act_in, add=(), norm=None, norm_in=None, two=None) -> None:
    """``norm``: (LN weight, LN bias, their run stride, mean, rstd, eps) for ``matmul_layer_norm``; ``norm_in``:
    (LN weight, its run stride, mean, rstd, partials) for ``matmul_layer_norm_grad``; ``two``: ("fan", b2, bias2,
    c2) for ``matmul_fan``'s second layer, ("fan", b2, bias2, c2, a3, b3, bias3, c3) with its third,
    ("pair", a2, b2) for ``matmul``'s ``pair``."""
    runs = 1 if a.dim() == 2 else a.shape[0]
    m, k, n = a.shape[-2], a.shape[-1], b.shape[-1]
    mode = {None: 0, "fan": 1, "pair": 2}[None if two is None else two[0]]
    if mode == 1 and len(two) == 8:
        mode = 3
    layers = {1: 2, 3: 3}.get(mode, 1)  # programs per run along grid axis 1
    if runs * layers > _MAX_GRID_Y:
        raise ValueError(f"matmul: {runs} runs; supported: up to {_MAX_GRID_Y // layers}")
    (block_m, block_n, block_k, warps, stages), precision = _config(_mode(a.dtype), act_in or norm_in is not None,
                                                                    n if norm else 0, mode == 2)
    a_rs, a_ms, a_ks = (0, *a.stride()) if a.dim() == 2 else a.stride()
    b_rs, b_ks, b_ns = (0, *b.stride()) if b.dim() == 2 else b.stride()
    if bias is not None and bias.stride(-1) != 1:
        bias = bias.contiguous()
    bias_rs = 0 if bias is None or bias.dim() == 1 else bias.stride(0)
    d1, d2 = (*add, None, None)[:2]
    lnw, lnb, ln_rs, mean, rstd, eps = norm or (c, c, 0, c, c, 0.0)
    part = c
    if norm_in is not None:
        lnw, ln_rs, mean, rstd, part = norm_in
    a2, b2, bias2, c2 = a, b, bias, c  # (unread unless TWO says so)
    a3, b3, bias3, c3, m3 = a, b, bias, c, m
    if mode in (1, 3):
        b2, bias2, c2 = two[1:4]
    elif mode == 2:
        _, a2, b2 = two
    if mode == 3:
        a3, b3, bias3, c3 = two[4:]
        m3 = a3.shape[-2]
    grid = (triton.cdiv(max(m, m3), block_m) * triton.cdiv(n, block_n), runs * layers)
    _matmul_kernel[grid](a, b, c if bias is None else bias, c, c if pre is None else pre, c if dpre is None else dpre,
                         c if d1 is None else d1, c if d2 is None else d2, lnw, lnb, mean, rstd, part, a2, b2,
                         c if bias2 is None else bias2, c2, a3, b3, c if bias3 is None else bias3, c3, m, n, k, m3,
                         a_rs, a_ms, a_ks, a3.stride(-2), b_rs, b_ks, b_ns, bias_rs, *_strides(c), _strides(c3)[0],
                         *_strides(d1), *_strides(d2), ln_rs, eps, HAS_BIAS=bias is not None,
                         ACT_OUT=act_out, ACT_IN=act_in, ADDS=len(add), NORM=norm is not None,
                         NORM_IN=norm_in is not None, TWO=mode,
                         BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, DOT_PRECISION=precision,
                         UPCAST=INTERPRET and a.dtype == torch.bfloat16, num_warps=warps, num_stages=stages,
                         **pdl(a))


def _same_layout(x: torch.Tensor | None, y: torch.Tensor | None) -> bool:
    """Whether y can be read with x's strides (both None, or one shape, dtype and strides)."""
    if x is None or y is None:
        return x is None and y is None
    return x.shape == y.shape and x.dtype == y.dtype and x.stride() == y.stride()


def matmul(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None, act: str | None = None,
           *, add=(), out: torch.Tensor | None = None, pair: tuple[torch.Tensor, torch.Tensor] | None = None):
    """``a @ b (+ bias)``, per run for 3-D operands; see the module docstring. With ``act`` ("gelu": F.gelu's
    exact form, "gelu_tanh": its tanh approximation, or "tanh"): ``(act(c), c)`` from one launch, c kept for
    the backward.

    ``add``: up to two tensors of c's shape added before the rounding, and ``out``: where c goes (its rows
    may be strided, e.g. one position of a (B, L, C) gradient; it may also be an addend: ``c += a @ b``);
    all in a's dtype or all float32 (then c is float32, as autocast's gradients of an fp32 stream are).
    Gradients that meet at one tensor, summed in the product's launch; not with ``act``.

    ``pair=(a2, b2)``: ``c = a @ b + a2 @ b2 (+ Σ add)`` in the same launch, a2 of a's shape, dtype and strides,
    b2 of b's, no bias -- the input gradient of two layers that read one input (``matmul_fan``'s)."""
    _check(a, b, bias)
    _check_act(act)
    add, dtype = _check_out(a, b, add, out)
    if act is not None and (add or out is not None or pair is not None):
        raise ValueError("matmul: add, out and pair are for products without act")
    if pair is not None and bias is not None:
        raise ValueError("matmul: pair is for input gradients, without bias")
    if pair is not None and not matmul_fits_pair(a, b, *pair):
        raise ValueError("matmul: pair=(a2, b2) must have a's and b's shapes, dtypes and strides")
    if not use_triton(a, b, bias, *add, out, *(pair or ())) or a.numel() == 0 or b.numel() == 0:
        if pair is None:  # (nothing to multiply, or the CPU)
            return matmul_reference(a, b, bias, act, add=add, out=out)
        return _finish(matmul_reference(a, b).to(dtype) + torch.matmul(*pair).to(dtype), add, out, dtype)
    shape = (*a.shape[:-1], b.shape[-1])
    c = torch.empty(shape, dtype=dtype, device=a.device) if out is None else out
    pre = None if act is None else torch.empty(shape, dtype=a.dtype, device=a.device)
    _launch(a, b, bias, c, pre, None, _ACT[act], 0, add, two=None if pair is None else ("pair", *pair))
    return c if act is None else (c, pre)


def matmul_fits_pair(a: torch.Tensor, b: torch.Tensor, a2: torch.Tensor, b2: torch.Tensor) -> bool:
    """Whether ``a @ b + a2 @ b2`` can be one launch (``matmul``'s ``pair``): a2 read with a's strides, b2
    with b's."""
    return _same_layout(a, a2) and _same_layout(b, b2)


def matmul_fits_fan(w: torch.Tensor, bias: torch.Tensor | None, w2: torch.Tensor, bias2: torch.Tensor | None,
                    layers: int = 2, a: torch.Tensor | None = None, a3: torch.Tensor | None = None) -> bool:
    """Whether two layers' weights (N, K) / (R, N, K) and biases can share a ``matmul_fan`` launch (the second
    with the first; ``layers`` 3: as its third layer), whose grid holds ``layers`` programs' rows per run; with
    ``a`` and ``a3``, also whether the third's rows a3 can be read with a's run and K strides."""
    runs = 1 if w.dim() == 2 else w.shape[0]
    rows_fit = a is None or _third_rows_fit(a, a3)
    return _same_layout(w, w2) and _same_layout(bias, bias2) and layers * runs <= _MAX_GRID_Y and rows_fit


def _third_rows_fit(a: torch.Tensor, a3: torch.Tensor) -> bool:
    return a3.dim() == a.dim() and a3.stride(-1) == a.stride(-1) and (a.dim() == 2 or a3.stride(0) == a.stride(0))


def matmul_fan(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None, b2: torch.Tensor,
               bias2: torch.Tensor | None, third: tuple | None = None) -> tuple[torch.Tensor, ...]:
    """Two layers reading one input in one launch: ``(a @ b + bias, a @ b2 + bias2)`` -- the attention's k and
    v projections. b2 (and bias2) must have b's (and bias's) shape, dtype and strides: the two layers' weights
    are of one shape, and a pack's are views of one buffer with one run stride. No activation. Per run for
    3-D operands, as ``matmul``.

    ``third`` = (a3, b3, bias3): a third layer in the same launch, ``a3 @ b3 + bias3`` appended to the result,
    reading its own rows of the input -- the query at the readout row: a3 (M3, K) / (R, M3, K), rows of any
    stride, with a's run stride and stride along K (``x[..., p, :]`` of the ``x`` whose rows are a); b3 and
    bias3 laid out as b and bias."""
    _check(a, b, bias)
    if not (_same_layout(b, b2) and _same_layout(bias, bias2)):
        raise ValueError("matmul_fan: b2 and bias2 must have b's and bias's shapes, dtypes and strides")
    if third is not None:
        a3, b3, bias3 = third
        _check(a3, b3, bias3)
        if not (_same_layout(b, b3) and _same_layout(bias, bias3) and _third_rows_fit(a, a3)):
            raise ValueError("matmul_fan: the third layer's b3 and bias3 must have b's and bias's layouts, and a3 "
                             "a's run stride and stride along K")
    if not use_triton(a, b, bias, b2, bias2, *(third or ())) or a.numel() == 0 or b.numel() == 0:
        return (matmul_reference(a, b, bias), matmul_reference(a, b2, bias2),
                *(() if third is None else (matmul_reference(*third),)))
    shape = (*a.shape[:-1], b.shape[-1])
    c, c2 = (torch.empty(shape, dtype=a.dtype, device=a.device) for _ in range(2))
    if bias is not None and bias.stride(-1) != 1:
        bias, bias2 = bias.contiguous(), bias2.contiguous()
    if third is None:
        _launch(a, b, bias, c, None, None, 0, 0, two=("fan", b2, bias2, c2))
        return c, c2
    a3, b3, bias3 = third
    if bias3 is not None and bias3.stride(-1) != 1:
        bias3 = bias3.contiguous()
    c3 = torch.empty((*a3.shape[:-1], b.shape[-1]), dtype=a.dtype, device=a.device)
    _launch(a, b, bias, c, None, None, 0, 0, two=("fan", b2, bias2, c2, a3, b3, bias3, c3))
    return c, c2, c3


def matmul_act_grad(dy: torch.Tensor, pre: torch.Tensor, b: torch.Tensor, act: str,
                    *, add=(), out: torch.Tensor | None = None):
    """The input gradient of a linear layer followed by an activation: ``dpre = dy * act'(pre)`` and
    ``dpre @ b``, in one launch. ``pre`` is the product ``matmul(..., act=act)`` returned, ``b`` the layer's
    weight (N, K) or (R, N, K). Returns ``(dpre @ b (+ Σ add), dpre)``: dpre is what the layer's weight
    gradient needs. ``add`` and ``out`` as for ``matmul``."""
    _check(dy, b, None)
    _check_act(act)
    add, dtype = _check_out(dy, b, add, out)
    if act is None or pre.shape != dy.shape or pre.dtype != dy.dtype:
        raise ValueError(f"matmul_act_grad: pre must have dy's shape and dtype {tuple(dy.shape)} {dy.dtype} and "
                         f"act must be 'gelu', 'gelu_tanh' or 'tanh'; got {tuple(pre.shape)} {pre.dtype}, {act!r}")
    if not use_triton(dy, pre, b, *add, out) or dy.numel() == 0 or b.numel() == 0:
        return matmul_act_grad_reference(dy, pre, b, act, add=add, out=out)
    pre = pre.contiguous()
    c = torch.empty((*dy.shape[:-1], b.shape[-1]), dtype=dtype, device=dy.device) if out is None else out
    dpre = torch.empty_like(pre)
    _launch(dy, b, None, c, pre, dpre, 0, _ACT[act], add)
    return c, dpre


def _ln_rows(weight: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """LayerNorm weight and bias as the kernel reads them (``layer_norm``'s own preparation): fp32, contiguous
    rows, and here one run stride for both (a pack's (R, N) views of the optimiser's flat buffer qualify)."""
    n = weight.shape[-1]
    if weight.dim() == 1:
        return (*_affine_fp32(weight, bias, n, weight.device), 0)
    (w, w_stride), (b, b_stride) = (_packed_affine_fp32(t, n, 0.0, weight.device) for t in (weight, bias))
    if w_stride != b_stride:
        w, b = w.contiguous(), b.contiguous()
    return w, b, w.stride(0)


def matmul_layer_norm_reference(a, b, bias, residual, ln_weight, ln_bias, eps: float):
    """The executable spec of ``matmul_layer_norm``: z = a @ b + bias + residual (``matmul_reference``, in
    the residual's dtype), its rows' mean and 1/std in fp32, and LayerNorm(z) rounded to z's dtype."""
    z = matmul_reference(a, b, bias, add=residual)
    zf = z.float()
    mean = zf.mean(-1)
    rstd = torch.rsqrt((zf - mean.unsqueeze(-1)).square().mean(-1) + eps)
    w, b_ = ln_weight.float(), ln_bias.float()
    if w.dim() == 2:  # a pack's (R, N) rows, broadcast over each run's rows
        w, b_ = w.unsqueeze(-2), b_.unsqueeze(-2)
    y = (zf - mean.unsqueeze(-1)) * rstd.unsqueeze(-1) * w + b_
    return y.to(z.dtype), z, mean, rstd


def matmul_layer_norm(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None, residual: torch.Tensor | None,
                      ln_weight: torch.Tensor, ln_bias: torch.Tensor, eps: float):
    """Post-LN's projection, add and normalise in one launch: ``z = a @ b + bias + residual`` and
    ``LayerNorm(z)`` with ``ln_weight``, ``ln_bias`` ((N,), or a pack's (R, N)). Returns ``(y, z, mean, rstd)``:
    z, mean and 1/std (fp32, (M,) or (R, M)) are what ``fused_layer_norm``'s backward reads. The residual
    (rows of any stride) sets z's and y's dtype: a's, or fp32 (autocast's bf16 products meeting the fp32
    residual stream). One column tile holds a whole row: N up to ``MAX_NORM_N``."""
    _check(a, b, bias)
    n = b.shape[-1]
    want = (*a.shape[:-2], n)
    if bias is None or residual is None or n > MAX_NORM_N or tuple(ln_weight.shape) != want \
            or tuple(ln_bias.shape) != want:
        raise ValueError(f"matmul_layer_norm: a bias, a residual, rows of up to {MAX_NORM_N} and LayerNorm weight "
                         f"and bias {want}; got bias {bias is not None}, residual {residual is not None}, N = {n}, "
                         f"{tuple(ln_weight.shape)}, {tuple(ln_bias.shape)}")
    add, dtype = _check_out(a, b, residual, None)
    if not use_triton(a, b, bias, *add, ln_weight, ln_bias) or a.numel() == 0 or b.numel() == 0:
        return matmul_layer_norm_reference(a, b, bias, residual, ln_weight, ln_bias, eps)
    shape = (*a.shape[:-1], n)
    y, z = (torch.empty(shape, dtype=dtype, device=a.device) for _ in range(2))
    mean, rstd = (torch.empty(shape[:-1], dtype=torch.float32, device=a.device) for _ in range(2))
    lnw, lnb, ln_rs = _ln_rows(ln_weight, ln_bias)
    _launch(a, b, bias, y, z, None, 0, 0, add, norm=(lnw, lnb, ln_rs, mean, rstd, float(eps)))
    return y, z, mean, rstd


def matmul_layer_norm_grad_reference(dy, z, ln_weight, mean, rstd, b, *, out=None):
    """The executable spec of ``matmul_layer_norm_grad``: ``layer_norm_backward_reference``, then ``dz @ b``;
    its weight and bias gradients as one partial each, (1, K) or (R, 1, K)."""
    dz, dw, db = layer_norm_backward_reference(z, ln_weight, mean, rstd, dy)
    return matmul_reference(dz, b, out=out), dz, dw.unsqueeze(-2), db.unsqueeze(-2)


def matmul_layer_norm_grad(dy: torch.Tensor, z: torch.Tensor, ln_weight: torch.Tensor, mean: torch.Tensor,
                           rstd: torch.Tensor, b: torch.Tensor, *, out: torch.Tensor | None = None):
    """The backward of ``matmul_layer_norm`` in one launch: the LayerNorm's backward, dz, computed as the
    projection's input gradient ``dz @ b`` loads it (``b`` the layer's weight (K, N) or a pack's (R, K, N) -- the
    input gradient of x Wᵀ reads W as it is). ``dy`` is the gradient of the LayerNorm's output (rows of any
    stride), ``z``, ``mean``, ``rstd`` what ``matmul_layer_norm`` returned, ``ln_weight`` (K,) or (R, K); dy, z
    and b of one dtype. Returns ``(dx, dz, dweight, dbias)``: dz is the residual's gradient and the layer's
    weight gradient's dy; the LayerNorm's weight and bias gradients come as fp32 partial sums, (P, K) or a pack's
    (R, P, K), for the caller to sum over P (``layer_norm_backward(reduce=False)``'s contract). ``out`` as for
    ``matmul`` (dx's place, rows of any stride)."""
    _check(dy, b, None)
    shape = tuple(dy.shape)
    lead = shape[:-2]
    if tuple(z.shape) != shape or z.dtype != dy.dtype or tuple(ln_weight.shape) != (*lead, shape[-1]) \
            or tuple(mean.shape) != shape[:-1] or tuple(rstd.shape) != shape[:-1] \
            or mean.dtype != torch.float32 or rstd.dtype != torch.float32:
        raise ValueError(f"matmul_layer_norm_grad: z of dy's shape and dtype {shape} {dy.dtype}, LayerNorm weight "
                         f"{(*lead, shape[-1])} and float32 mean and rstd {shape[:-1]}; got {tuple(z.shape)} {z.dtype}, "
                         f"{tuple(ln_weight.shape)}, {tuple(mean.shape)} {mean.dtype}, {tuple(rstd.shape)} {rstd.dtype}")
    _, dtype = _check_out(dy, b, (), out)
    if dtype != dy.dtype:
        raise ValueError(f"matmul_layer_norm_grad: out must be {dy.dtype}, as dy; got {dtype}")
    if not use_triton(dy, z, ln_weight, mean, rstd, b, out) or dy.numel() == 0 or b.numel() == 0:
        return matmul_layer_norm_grad_reference(dy, z, ln_weight, mean, rstd, b, out=out)
    z, mean, rstd = z.contiguous(), mean.contiguous(), rstd.contiguous()
    runs, m, k = (1, *shape) if dy.dim() == 2 else shape
    lnw, ln_rs = weight_rows(ln_weight)
    c = torch.empty((*shape[:-1], b.shape[-1]), dtype=dtype, device=dy.device) if out is None else out
    dz = torch.empty_like(z)
    block_m = _config(_mode(dy.dtype), 1)[0][0]  # a program's rows: one partial sum each
    part = torch.empty((2, runs, triton.cdiv(m, block_m), k), dtype=torch.float32, device=dy.device)
    _launch(dy, b, None, c, z, dz, 0, 0, norm_in=(lnw, ln_rs, mean, rstd, part))
    return (c, dz, *(part[i] if dy.dim() == 3 else part[i, 0] for i in (0, 1)))


def compile_specs() -> list[CompileSpec]:
    """Every configuration ``matmul``, ``matmul_act_grad``, ``matmul_fan``, ``matmul_layer_norm`` and its ``_grad``
    can launch: a forward (operand dtype, fp32 in both precisions, x bias dtype x an activation after it or not;
    two or three layers at once; a LayerNorm after it), and an input gradient (an activation's derivative before it or
    not x 0, 1 or 2 addends x c in the operands' dtype or float32; two layers' summed; a LayerNorm's backward
    before it)."""
    specs = []
    for dtype in SUPPORTED_DTYPES:
        ty = SIGNATURE_DTYPES[dtype]
        for mode in (("tf32x3", "tf32") if dtype == torch.float32 else ("16bit",)):
            biases = (None, "fp32") if dtype == torch.float32 else (None, "fp32", ty)
            acts = tuple(_ACT.values())
            variants = [(bias, act, 0, 0, ty) for bias in biases for act in acts if bias or act]
            variants += [(None, 0, act, adds, cty) for act in acts for adds in (0, 1, 2)
                         for cty in dict.fromkeys((ty, "fp32"))]
            variants = [(*v, 0, 0) for v in variants] + [
                (bias, 0, 0, 1, cty, n, 0) for n in (16, 32, 64, 128, 256) for cty in dict.fromkeys((ty, "fp32"))
                for bias in dict.fromkeys(("fp32", ty))]  # matmul_layer_norm: every row width's tile
            variants += [(bias, 0, 0, 0, ty, 0, two) for two in (1, 3) for bias in biases]  # matmul_fan (+ third)
            variants += [(None, 0, 0, adds, cty, 0, 2) for adds in (0, 1, 2)  # matmul's pair
                         for cty in dict.fromkeys((ty, "fp32"))]
            variants = [(*v, False) for v in variants] + [(None, 0, 0, 0, ty, 0, 0, True)]  # matmul_layer_norm_grad
            for bias, act_out, act_in, adds, cty, norm_n, two, norm_in in variants:
                (block_m, block_n, block_k, warps, stages), precision = _config(mode, act_in or norm_in, norm_n,
                                                                                two == 2)
                sig = dict(A=f"*{ty}", B=f"*{ty}", BIAS=f"*{bias or cty}", C=f"*{cty}",
                           PRE=f"*{cty if norm_n else ty}", DPRE=f"*{ty}", D1=f"*{cty}", D2=f"*{cty}", LNW="*fp32",
                           LNB="*fp32", MEAN="*fp32", RSTD="*fp32", PART="*fp32", A2=f"*{ty}", B2=f"*{ty}",
                           BIAS2=f"*{bias or cty}", C2=f"*{cty}", A3=f"*{ty}", B3=f"*{ty}", BIAS3=f"*{bias or cty}",
                           C3=f"*{cty}", M="i32", N="i32", K="i32", M3="i32", a_rs="i32", a_ms="i32", a_ks="i32",
                           a3_ms="i32", b_rs="i32", b_ks="i32", b_ns="i32", bias_rs="i32", c_rs="i32", c_ms="i32",
                           c3_rs="i32", d1_rs="i32", d1_ms="i32", d2_rs="i32", d2_ms="i32", ln_rs="i32", eps="fp32",
                           HAS_BIAS="constexpr", ACT_OUT="constexpr", ACT_IN="constexpr", ADDS="constexpr",
                           NORM="constexpr", NORM_IN="constexpr", TWO="constexpr", BLOCK_M="constexpr", BLOCK_N="constexpr", BLOCK_K="constexpr",
                           DOT_PRECISION="constexpr", UPCAST="constexpr")
                norm = f",norm={block_n}" if norm_n else ",norm_in" if norm_in else ""
                pair = {0: "", 1: ",fan", 2: ",pair", 3: ",fan3"}[two]
                specs.append(CompileSpec(
                    name=f"matmul[{ty},{precision},bias={bias},act_out={act_out},act_in={act_in},adds={adds},c={cty}"
                         f"{norm}{pair}]",
                    fn=_matmul_kernel, signature=sig,
                    constexprs=dict(HAS_BIAS=bias is not None, ACT_OUT=act_out, ACT_IN=act_in, ADDS=adds,
                                    NORM=bool(norm_n), NORM_IN=norm_in, TWO=two, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
                                    DOT_PRECISION=precision, UPCAST=False),
                    num_warps=warps, num_stages=stages, tensor_cores=True))
    return specs
