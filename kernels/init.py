"""BERT-style initialisation followed by a global rescale of every parameter by alpha.

``scaled_init_(module, std, alpha, seed)``: Linear and Embedding weights ~ normal(0, std),
biases 0, an Embedding's padding row 0, LayerNorm weight 1 and bias 0, then every parameter
multiplied by alpha (the grokking configuration of the critical-data-size paper uses alpha=10).
``rescale_(params, alpha)``: the x alpha alone. Tied weights (one tensor reached twice) are drawn
once and scaled once.

Dispatch: CUDA parameters run Triton; CPU parameters run the reference (a ``torch.Generator`` seeded
with ``seed`` drawing each weight in module order), or the Triton kernel under ``TRITON_INTERPRET=1``.

The Triton path makes ONE launch per parameter dtype (one in total for an fp32 model) that writes
every parameter: a table with one row per block of ``BLOCK`` elements names the tensor (its address),
the block, and what to write there -- std*alpha*N(0,1) from ``tl.randn(seed, offset)`` (Philox, the
offset being the element's index in the concatenation of all drawn weights, so the stream does not
depend on the block size or the launch), the constant alpha (LayerNorm weights), 0 (biases), or the
old value x alpha (parameters no rule touches) -- and a range of elements to zero (an Embedding's
padding row). The final "every parameter x alpha" is folded into the same write, so each parameter
is written once (the fp32 paper encoder: 4.2 M x 4 B = 17 MB, plus 4 B read for the untouched).
The Triton RNG stream differs from the reference's ``torch.Generator`` stream: the same seed gives
the same weights run after run on the Triton path, but not the reference's weights. Triton-path
dtypes: float32, bfloat16, float16.
"""

from __future__ import annotations

from typing import Iterable

import torch
import triton
import triton.language as tl
from torch import nn

from ._compile import CompileSpec
from ._dispatch import check_dtype, use_triton

SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
BLOCK = 1024
NUM_WARPS = 4
_TL = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}
# table columns: address, block start, numel, mode, rng offset, zero-range lo, zero-range hi, spare
_COLS = 8
NORMAL, ONES, ZEROS, SCALE = 0, 1, 2, 3  # modes; every written value is then x alpha (0 stays 0)


def _unique_params(params: Iterable[torch.Tensor]) -> list[torch.Tensor]:
    seen: set[int] = set()
    out = []
    for p in params:
        if id(p) not in seen:  # tied weights appear once
            seen.add(id(p))
            out.append(p)
    return out


@torch.no_grad()
def rescale_reference_(params: Iterable[torch.Tensor], alpha: float) -> None:
    for p in _unique_params(params):
        p.mul_(alpha)


@torch.no_grad()
def scaled_init_reference_(module: nn.Module, std: float = 0.02, alpha: float = 1.0, seed: int = 0) -> None:
    """The executable spec: a CPU generator seeded with ``seed`` draws each weight in module order."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    done: set[int] = set()

    def normal_(w: torch.Tensor) -> None:
        if id(w) in done:
            return
        done.add(id(w))
        w.copy_(torch.randn(w.shape, generator=gen, dtype=torch.float32).mul_(std).to(w))

    for m in module.modules():
        if isinstance(m, nn.Linear):
            normal_(m.weight)
            if m.bias is not None:
                m.bias.zero_()
        elif isinstance(m, nn.Embedding):
            normal_(m.weight)
            if m.padding_idx is not None:
                m.weight[m.padding_idx].zero_()
        elif isinstance(m, nn.LayerNorm):
            if m.weight is not None:
                m.weight.fill_(1.0)
            if m.bias is not None:
                m.bias.zero_()
    rescale_reference_(module.parameters(), alpha)



@triton.jit(do_not_specialize=["seed"])
def _init_kernel(TABLE, seed, std, alpha, DTYPE: tl.constexpr, BLOCK: tl.constexpr):
    row = TABLE + tl.program_id(0) * 8
    ptr = tl.load(row).to(tl.pointer_type(DTYPE))
    start = tl.load(row + 1)
    numel = tl.load(row + 2)
    mode = tl.load(row + 3)
    rng = tl.load(row + 4)
    zero_lo = tl.load(row + 5)
    zero_hi = tl.load(row + 6)
    idx = start + tl.arange(0, BLOCK)
    mask = idx < numel
    if mode == 0:  # NORMAL
        val = tl.randn(seed, (rng + idx).to(tl.int32)) * std * alpha
    elif mode == 1:  # ONES
        val = tl.full([BLOCK], 1.0, tl.float32) * alpha
    elif mode == 2:  # ZEROS
        val = tl.zeros([BLOCK], dtype=tl.float32)
    else:  # SCALE
        val = tl.load(ptr + idx, mask=mask, other=0.0).to(tl.float32) * alpha
    val = tl.where((idx >= zero_lo) & (idx < zero_hi), 0.0, val)
    tl.store(ptr + idx, val.to(DTYPE), mask=mask)


class _Plan:
    """What the reference would leave in each unique tensor, replayed from its sequence of operations."""

    def __init__(self):
        self.tensors: list[torch.Tensor] = []
        self.mode: dict[int, int] = {}
        self.rows: dict[int, list[int]] = {}  # padding rows zeroed after the last full write
        self.drawn: set[int] = set()

    def _full(self, t: torch.Tensor, mode: int) -> None:
        if id(t) not in self.mode:
            self.tensors.append(t)
        self.mode[id(t)] = mode
        self.rows[id(t)] = []

    def normal(self, t):  # the reference draws a tensor once, however often it is reached
        if id(t) not in self.drawn:
            self.drawn.add(id(t))
            self._full(t, NORMAL)

    def fill(self, t, mode):
        self._full(t, mode)

    def zero_row(self, t, row):
        if id(t) not in self.mode:
            self._full(t, SCALE)
        self.rows[id(t)].append(row)

    def untouched(self, t):
        if id(t) not in self.mode:
            self._full(t, SCALE)


def _launch(tensors: list[torch.Tensor], modes: list[int], zero_rows: list[list[int]], seed: int, std: float,
            alpha: float) -> None:
    """One launch per dtype over ``tensors`` (each contiguous, same device)."""
    if not 0 <= seed < 2 ** 63:
        raise ValueError(f"seed {seed} is unsupported; supported: 0 <= seed < 2**63")
    by_dtype: dict[torch.dtype, list[int]] = {}
    for i, t in enumerate(tensors):
        if t.numel() > 0:
            by_dtype.setdefault(t.dtype, []).append(i)
    rng_next = 0
    rng_offsets = []
    for t, m in zip(tensors, modes):
        rng_offsets.append(rng_next)
        if m == NORMAL:
            rng_next += t.numel()
    if rng_next >= 2 ** 31:
        raise ValueError(f"{rng_next} normally drawn elements; supported: fewer than 2**31")
    for dtype, idxs in by_dtype.items():
        rows = []
        for i in idxs:
            t = tensors[i]
            n, rlen = t.numel(), (t[0].numel() if t.dim() > 0 else 1)
            lo = hi = 0
            extra = []
            for k, r in enumerate(sorted(set(zero_rows[i]))):
                if k == 0:
                    lo, hi = r * rlen, (r + 1) * rlen
                else:
                    extra.append(r)  # more than one padding row on one tensor: zeroed after the launch
            if extra:
                zero_rows[i] = extra
            else:
                zero_rows[i] = []
            rows.append([t.data_ptr(), 0, n, modes[i], rng_offsets[i], lo, hi, triton.cdiv(n, BLOCK)])
        per_tensor = torch.tensor(rows, dtype=torch.int64)
        blocks = per_tensor[:, 7]
        table = per_tensor.repeat_interleave(blocks, dim=0)
        first = torch.cumsum(blocks, 0) - blocks
        table[:, 1] = (torch.arange(table.shape[0]) - first.repeat_interleave(blocks)) * BLOCK
        table = table.to(tensors[idxs[0]].device)
        _init_kernel[(table.shape[0],)](table, seed, float(std), float(alpha), DTYPE=_TL[dtype], BLOCK=BLOCK,
                                        num_warps=NUM_WARPS)
    for t, rows_left in zip(tensors, zero_rows):
        for r in rows_left:
            t[r].zero_()


def _triton_params(params: list[torch.Tensor]) -> None:
    for p in params:
        check_dtype("a parameter", p, SUPPORTED_DTYPES)


@torch.no_grad()
def _run_plan(plan: _Plan, seed: int, std: float, alpha: float) -> None:
    tensors, modes, zero_rows, copies = [], [], [], []
    for t in plan.tensors:
        target = t if t.is_contiguous() else torch.empty_like(t, memory_format=torch.contiguous_format)
        if target is not t:
            target.copy_(t)
            copies.append((t, target))
        tensors.append(target)
        modes.append(plan.mode[id(t)])
        zero_rows.append(list(plan.rows[id(t)]))
    _launch(tensors, modes, zero_rows, seed, std, alpha)
    for t, target in copies:
        t.copy_(target)


def scaled_init_(module: nn.Module, std: float = 0.02, alpha: float = 1.0, seed: int = 0) -> None:
    """BERT-style init of every submodule, then every parameter x alpha (see the module docstring).

    CUDA: one Triton launch per parameter dtype, seeded by ``seed`` (deterministic). CPU: the
    reference, a ``torch.Generator(seed)`` stream (or the Triton kernel under the interpreter).
    """
    params = list(module.parameters())
    if not params or not use_triton(*params):
        scaled_init_reference_(module, std, alpha, seed)
        return
    _triton_params(params)
    plan = _Plan()
    for m in module.modules():  # the reference's order and rules, replayed
        if isinstance(m, nn.Linear):
            plan.normal(m.weight)
            if m.bias is not None:
                plan.fill(m.bias, ZEROS)
        elif isinstance(m, nn.Embedding):
            plan.normal(m.weight)
            if m.padding_idx is not None:
                plan.zero_row(m.weight, m.padding_idx)
        elif isinstance(m, nn.LayerNorm):
            if m.weight is not None:
                plan.fill(m.weight, ONES)
            if m.bias is not None:
                plan.fill(m.bias, ZEROS)
    for p in _unique_params(params):
        plan.untouched(p)
    _run_plan(plan, seed, std, alpha)


def rescale_(params: Iterable[torch.Tensor], alpha: float) -> None:
    """Every (unique) tensor in ``params`` x alpha, in place: one Triton launch per dtype on CUDA."""
    params = _unique_params(params)
    if not params or not use_triton(*params):
        rescale_reference_(params, alpha)
        return
    _triton_params(params)
    plan = _Plan()
    for p in params:
        plan.untouched(p)
    _run_plan(plan, 0, 0.0, alpha)


def compile_specs() -> list[CompileSpec]:
    """The shipped configurations: one kernel per parameter dtype, a 32- or 64-bit seed, BLOCK 1024."""
    specs = []
    for dtype, ty in ((tl.float32, "fp32"), (tl.bfloat16, "bf16"), (tl.float16, "fp16")):
        for seed_ty in ("i32", "i64"):
            specs.append(CompileSpec(
                name=f"scaled_init[BLOCK={BLOCK},{ty},seed:{seed_ty}]", fn=_init_kernel,
                signature=dict(TABLE="*i64", seed=seed_ty, std="fp32", alpha="fp32", DTYPE="constexpr",
                               BLOCK="constexpr"),
                constexprs=dict(DTYPE=dtype, BLOCK=BLOCK), num_warps=NUM_WARPS))
    return specs
