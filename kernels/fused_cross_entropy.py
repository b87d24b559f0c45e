"""Cross-entropy fused with its gradient and the step's metrics, one launch: ``cross_entropy(logits, targets, ...)``.

A training step's loss is more than ``F.cross_entropy``: the trainer also counts the correct
predictions and adds the batch's loss, correct count and size to the interval's running sums. In
PyTorch that is log-softmax, NLL, their two backward kernels, argmax, compare, stack and adds: a
dozen launches on rows of 2 to a few hundred classes, each too small to hide its launch. Here:

- per row, the max, log-sum-exp, the loss, the argmax, and the (fp32) gradient
  ``weight * (softmax - onehot)``, written once (the loss is the last op, so its gradient is known);
  per program, partial sums of the weighted loss, the loss, the correct count and the row count;
- in the same launch, the run's last program to finish reduces the run's partials in a fixed order --
  deterministic, whichever program is last -- writes the run's loss and adds [loss sum, correct, rows] to
  ``sums`` (float64; or sets them, ``accumulate=False``). "Last" is a ticket from the run's ``counter``
  (zeroed int32 (R,), the caller's to keep across calls; the last program puts it back to zero), as
  ``draw_batch`` advances its offsets;
- backward: the stored fp32 gradient times the incoming scalar, rounded to the logits' dtype (one
  elementwise product, and a cast for bf16/fp16 logits). Seeded with ``unit_seed(...)`` (a ones tensor
  that says so: the trainer's ``loss.backward(seed)``), the stored gradient is returned as it is: no
  launch for fp32 logits, autograd's cast alone for 16-bit ones. Without autograd (an evaluation under
  ``no_grad``, or logits that need no gradient) the gradient is neither written nor allocated.

Arguments: ``logits`` (B, V) or (R, B, V) for R packed runs, fp32, bf16 or fp16, V from 1 to
``MAX_V``; ``targets`` int64 (B,) or (R, B) (a (B,) shared by every run), each in [0, V) (not checked
on the device: a host check would sync); ``weight`` optional fp32 (B,) or (R, B), the loss is
``sum_b weight[b] * ce[b]`` per run (default 1 / B: the batch mean). A row of weight 0 is out: it adds
nothing to the loss, gradient or sums, even when its logits are not finite (the ragged last chunk of
an evaluation, a pack's idle lanes). ``sums`` optional float64 (3,) or (R, 3), each row contiguous: += [sum
of ce, correct count, row count] over the rows in (``accumulate=False``: =). ``counter`` optional int32, at
least R elements, zero (None: a fresh one, at the cost of a fill). Returns the loss, fp32, () or (R,),
differentiable in ``logits``; the gradient has the logits' dtype.

The arithmetic is fp32 whatever the logits' dtype (as ``F.cross_entropy(logits.float(), ...)``);
ties in the argmax go to the lowest class, as ``torch.argmax``'s do.

CUDA tensors run Triton; CPU tensors run ``cross_entropy_reference`` (or Triton under
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
MAX_V = 4096
BLOCK_VS = tuple(2 ** k for k in range(4, 13))  # 16 ... 4096: every BLOCK_V the dispatcher can pick
_PARTS = 4  # per program: weighted loss, loss, correct, rows
_REDUCE_BLOCK = 128  # partials the reduction reads at a time


def _config(v: int) -> tuple[int, int, int]:
    """(BLOCK_V, BLOCK_B, num_warps) for V classes: whole rows, tiles of 1024 elements or one row. Warps:
    spill-free on sm_80 and sm_90 under Triton 3.6 and 3.9 (at 2048-element tiles ptxas took up to 249
    registers; Triton 3.9's sm_90 build of the weighted bf16/fp16 BLOCK_V 512 tile spilled 8 B at 4 warps).
    With the reduction in the kernel, at 4 warps Triton 3.9's sm_80 build of the weighted 16-bit BLOCK_V 128
    tile spilled 8 B, and at 8 warps Triton 3.6's sm_80 build of the fp32 BLOCK_V 4096 row (16 warps: its
    16-bit sm_90 builds); these are the warps at which none did."""
    block_v = max(16, triton.next_power_of_2(v))
    block_b = max(1, 1024 // block_v)
    return block_v, block_b, 8 if 128 <= block_v <= 2048 else 4


def _empty(shape, dtype, device) -> torch.Tensor:
    """Every output buffer the kernels fill comes from here (tests poison it to catch unwritten memory)."""
    return torch.empty(shape, dtype=dtype, device=device)


@triton.jit(do_not_specialize=["sums_rs", "sums_mode"])  # one build for every mode and row stride
def _ce_kernel(LOGITS, TARGETS, WEIGHT, DLOGITS, PART, LOSS, SUMS, COUNTER, B, V, tiles, t_run_stride,
               w_run_stride, sums_rs, sums_mode, inv_b,
               HAS_WEIGHT: tl.constexpr, STORE_GRAD: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_V: tl.constexpr,
               BLOCK_T: tl.constexpr, PDL: tl.constexpr = False):
    enter(PDL)
    pid = tl.program_id(0)
    run = pid // tiles  # tiles programs per run: a tile never straddles two runs
    rows = (pid - run * tiles) * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = tl.arange(0, BLOCK_V)
    row_mask = rows < B
    col_mask = cols < V
    mask = row_mask[:, None] & col_mask[None, :]
    offs = (run.to(tl.int64) * B + rows)[:, None] * V + cols[None, :]

    x = tl.load(LOGITS + offs, mask=mask, other=0.0).to(tl.float32)
    x = tl.where(col_mask[None, :], x, float("-inf"))  # padding columns never win or weigh
    t = tl.load(TARGETS + run * t_run_stride + rows, mask=row_mask, other=0)
    if HAS_WEIGHT:
        w = tl.load(WEIGHT + run * w_run_stride + rows, mask=row_mask, other=0.0)
    else:
        w = tl.where(row_mask, inv_b, 0.0)
    live = row_mask & (w != 0.0)

    m = tl.max(x, axis=1)
    e = tl.exp(x - m[:, None])
    s = tl.sum(e, axis=1)
    is_t = cols[None, :] == t[:, None]
    ce = m + tl.log(s) - tl.sum(tl.where(is_t, x, 0.0), axis=1)
    hit = tl.argmax(x, axis=1, tie_break_left=True) == t
    if STORE_GRAD:  # not for an evaluation (no autograd): it would only cost bytes
        # weight x (softmax - onehot): d(sum_b w_b ce_b) / d logits; zero, not 0 x NaN, on rows that are out
        d = tl.where(live[:, None], w[:, None] * (e / s[:, None] - is_t.to(tl.float32)), 0.0)
        tl.store(DLOGITS + offs, d, mask=mask)

    part = PART + pid * 4  # _PARTS = 4 per program
    tl.store(part + 0, tl.sum(tl.where(live, w * ce, 0.0), axis=0))
    tl.store(part + 1, tl.sum(tl.where(live, ce, 0.0), axis=0))
    tl.store(part + 2, tl.sum((live & hit).to(tl.float32), axis=0))
    tl.store(part + 3, tl.sum(live.to(tl.float32), axis=0))

    # The run's last program to finish reduces its partials. Its ticket (acquire-release) comes after every
    # other program's of the run, each taken after that program's partials were stored; one thread takes a
    # program's ticket, so the barrier first: every warp of the program has stored.
    tl.debug_barrier()
    ticket = tl.atomic_add(COUNTER + run, 1, sem="acq_rel")
    if ticket == tiles - 1:
        _reduce_run(PART + run.to(tl.int64) * tiles * 4, LOSS + run, SUMS + run * sums_rs, tiles, sums_mode, BLOCK_T)
        tl.store(COUNTER + run, 0)  # ready for the next call (the launch boundary orders it before any later read)


@triton.jit
def _reduce_run(PART, LOSS, SUMS, tiles, sums_mode, BLOCK_T: tl.constexpr):
    """One run's partials summed in a fixed order (the same sums on every call, whichever program is last):
    LOSS gets the weighted loss; SUMS (sums_mode 1) += or (2) = [loss sum, correct, rows], in float64."""
    lanes = tl.arange(0, BLOCK_T)
    quad = tl.arange(0, 4)
    acc = tl.zeros([BLOCK_T, 4], dtype=tl.float64)  # the programs' fp32 partials (_PARTS = 4) summed in fp64
    for t0 in range(0, tiles, BLOCK_T):
        tile = t0 + lanes
        # from L2 (.cg), where the other programs' stores are: not a line this SM's L1 may hold from before
        acc += tl.load(PART + tile[:, None] * 4 + quad[None, :], mask=(tile < tiles)[:, None], other=0.0,
                       cache_modifier=".cg").to(tl.float64)
    tot = tl.sum(acc, axis=0)  # [weighted loss, loss, correct, rows]
    tl.store(LOSS + quad * 0, tot.to(tl.float32), mask=quad == 0)
    if sums_mode != 0:
        keep = quad >= 1
        sums = SUMS + tl.maximum(quad - 1, 0)  # lanes 1..3 -> the row's 3 entries; lane 0 masked
        old = tl.zeros([4], dtype=tl.float64)
        if sums_mode == 1:
            old = tl.load(sums, mask=keep, other=0.0)
        tl.store(sums, old + tot, mask=keep)


def _launch(logits, targets, weight, sums, accumulate: bool, counter, store_grad: bool):
    """The kernel: (loss (R,), the fp32 gradient weight * (softmax - onehot) or None)."""
    runs, b, v = logits.shape if logits.dim() == 3 else (1, *logits.shape)
    block_v, block_b, warps = _config(v)
    tiles = triton.cdiv(b, block_b)
    x = logits.contiguous()
    t = targets if targets.stride(-1) == 1 else targets.contiguous()
    w = None if weight is None else (weight if weight.stride(-1) == 1 else weight.contiguous())
    # fp32: rounded once to the logits' dtype, in the backward
    dlogits = _empty(x.shape, torch.float32, x.device) if store_grad else None
    loss = _empty((runs,), torch.float32, x.device)
    if tiles == 0:  # an empty batch: nothing in; nothing added, or zeros set
        loss.zero_()
        if store_grad:
            dlogits.zero_()
        if sums is not None and not accumulate:
            sums.zero_()
        return loss, dlogits
    part = _empty((runs * tiles, _PARTS), torch.float32, x.device)
    if counter is None:
        counter = torch.zeros(runs, dtype=torch.int32, device=x.device)
    # (an absent weight, gradient or sums is never read or written: ``part`` (fp32) or ``_no_sums`` (fp64) stands in)
    _ce_kernel[(runs * tiles,)](
        x, t, part if w is None else w, dlogits if store_grad else part, part, loss,
        _no_sums(x.device) if sums is None else sums, counter, b, v, tiles,
        t.stride(0) if t.dim() == 2 else 0, 0 if w is None or w.dim() == 1 else w.stride(0),
        0 if sums is None or sums.dim() == 1 else sums.stride(0), 0 if sums is None else (1 if accumulate else 2),
        1.0 / b, HAS_WEIGHT=w is not None, STORE_GRAD=store_grad, BLOCK_B=block_b, BLOCK_V=block_v,
        BLOCK_T=_REDUCE_BLOCK, num_warps=warps, **pdl(x))
    return loss, dlogits


def _no_sums(device) -> torch.Tensor:
    """A float64 pointer for an absent ``sums`` (never read or written), so that one build serves both."""
    return torch.empty(1, dtype=torch.float64, device=device)


_UNIT = "_cross_entropy_unit_seed"


def unit_seed(shape: tuple[int, ...], device: torch.device | str) -> torch.Tensor:
    """A ones tensor to seed ``loss.backward(seed)`` with, marked so that the loss's backward skips its
    product by one. Made once and never written: the mark is the promise that it holds ones."""
    seed = torch.ones(shape, device=device)
    setattr(seed, _UNIT, True)
    return seed


class _CrossEntropyFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, targets, weight, sums, accumulate, counter):
        loss, dlogits = _launch(logits, targets, weight, sums, accumulate, counter, store_grad=True)
        ctx.save_for_backward(dlogits)
        ctx.dtype = logits.dtype
        return loss if logits.dim() == 3 else loss.view(())

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dloss):
        (dlogits,) = ctx.saved_tensors
        if getattr(dloss, _UNIT, False):  # times one: nothing to launch (autograd rounds a 16-bit input's)
            return dlogits, None, None, None, None, None
        g = dloss.reshape(-1, *([1] * (dlogits.dim() - 1))) if dlogits.dim() == 3 else dloss
        # in fp32, then rounded once, as autograd rounds F.cross_entropy(logits.float())'s gradient
        return (dlogits * g).to(ctx.dtype), None, None, None, None, None


def _check(logits, targets, weight, sums, counter) -> None:
    if not isinstance(logits, torch.Tensor) or logits.dim() not in (2, 3):
        raise ValueError("cross_entropy: logits must be (B, V), or (R, B, V) for R packed runs")
    check_dtype("cross_entropy: logits", logits, SUPPORTED_DTYPES)
    runs, b, v = logits.shape if logits.dim() == 3 else (None, *logits.shape)
    if not 1 <= v <= MAX_V:
        raise ValueError(f"cross_entropy: {v} classes (last dim of logits) unsupported; supported: 1 to {MAX_V}")
    row_shapes = {(b,)} | ({(runs, b)} if runs is not None else set())
    want = " or ".join(str(s) for s in sorted(row_shapes, key=len))
    if targets.dtype != torch.int64 or tuple(targets.shape) not in row_shapes:
        raise ValueError(f"cross_entropy: targets must be int64 of shape {want}; got "
                         f"{str(targets.dtype).removeprefix('torch.')} {tuple(targets.shape)}")
    if weight is not None and (weight.dtype != torch.float32 or tuple(weight.shape) not in row_shapes):
        raise ValueError(f"cross_entropy: weight must be float32 of shape {want}; got "
                         f"{str(weight.dtype).removeprefix('torch.')} {tuple(weight.shape)}")
    if sums is not None:
        shape = (3,) if runs is None else (runs, 3)
        if (sums.dtype != torch.float64 or tuple(sums.shape) != shape or sums.stride(-1) != 1
                or (sums.dim() == 2 and runs > 1 and sums.stride(0) < 3)):
            raise ValueError(f"cross_entropy: sums must be a float64 tensor of shape {shape}, each row contiguous "
                             f"and apart from the others; got {str(sums.dtype).removeprefix('torch.')} "
                             f"{tuple(sums.shape)} strides {sums.stride()}")
    n = 1 if runs is None else runs
    if counter is not None and (counter.dtype != torch.int32 or counter.numel() < n or not counter.is_contiguous()
                                or counter.device != logits.device):
        raise ValueError(f"cross_entropy: counter must be a contiguous int32 tensor of at least {n} elements "
                         f"on the logits' device; got {str(counter.dtype).removeprefix('torch.')} "
                         f"{tuple(counter.shape)} on {counter.device}")


def cross_entropy_reference(logits: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor | None = None,
                            sums: torch.Tensor | None = None, accumulate: bool = True,
                            counter: torch.Tensor | None = None) -> torch.Tensor:
    """The executable spec, in PyTorch ops (fp32 math, or fp64 for fp64 logits); differentiable by autograd."""
    acc = torch.float64 if logits.dtype == torch.float64 else torch.float32
    z = logits.to(acc)
    t = targets.expand(z.shape[:-1])
    ce = None
    if weight is None and z.dim() == 2:  # the batch mean by F.cross_entropy's own reduction, as the trainer had it
        loss = F.cross_entropy(z, t)
    else:
        if weight is not None:  # rows out read as zeros: their logits, finite or not, reach nothing
            z = torch.where((weight != 0).expand(t.shape)[..., None], z, 0.0)
        ce = F.cross_entropy(z if z.dim() == 2 else z.transpose(1, 2), t, reduction="none")  # classes second
        weight = torch.full_like(ce, 1.0 / t.shape[-1]) if weight is None else weight
        loss = torch.where(weight != 0, weight.to(acc) * ce, 0.0).sum(-1)  # where, not a product: 0 x NaN is NaN
    if sums is not None:
        with torch.no_grad():
            live = torch.ones_like(t, dtype=torch.bool) if weight is None else (weight != 0).expand(t.shape)
            hits = (z.detach().argmax(-1) == t) & live
            # the mean's loss sum as mean x B (what the trainer's meter always added): one CE, not two
            total = (loss.detach().double() * t.shape[-1] if ce is None
                     else torch.where(live, ce, 0.0).double().sum(-1))  # each row's loss summed in fp64
            new = torch.stack([total, hits.sum(-1).double(), live.sum(-1).double()], dim=-1)
            sums.add_(new) if accumulate else sums.copy_(new)
    return loss


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor | None = None,
                  sums: torch.Tensor | None = None, accumulate: bool = True,
                  counter: torch.Tensor | None = None) -> torch.Tensor:
    """Per run ``sum_b weight[b] * CE(logits[b], targets[b])`` (default weight 1/B: the mean), differentiable
    in ``logits``; ``sums`` (float64 (3,) or (R, 3)), if given, gets += (``accumulate=False``: =) [CE sum,
    correct, rows] over the rows whose weight is not 0; ``counter``: the launch's zeroed int32 scratch (see the
    module docstring). See the module docstring for shapes."""
    _check(logits, targets, weight, sums, counter)
    if not use_triton(logits, targets, weight, sums, counter):
        return cross_entropy_reference(logits, targets, weight, sums, accumulate)
    if torch.is_grad_enabled() and logits.requires_grad:
        return _CrossEntropyFn.apply(logits, targets, weight, sums, accumulate, counter)
    loss, _ = _launch(logits, targets, weight, sums, accumulate, counter, store_grad=False)  # no gradient written
    return loss if logits.dim() == 3 else loss.view(())


def compile_specs() -> list[CompileSpec]:
    """Every configuration ``cross_entropy`` can launch: logits dtype x BLOCK_V x weight given or not x gradient
    stored or not (an evaluation); sums (none, added, set) are a runtime switch of the one build."""
    specs = []
    for block_v in BLOCK_VS:
        _, block_b, warps = _config(block_v)
        for dtype, ty in SIGNATURE_DTYPES.items():
            for has_weight in (False, True):
                for store_grad in (True, False):
                    tag = (f"BLOCK_B={block_b},BLOCK_V={block_v},{ty}{',weight' if has_weight else ''}"
                           f"{'' if store_grad else ',no grad'}")
                    specs.append(CompileSpec(
                        name=f"cross_entropy[{tag}]", fn=_ce_kernel,
                        signature=dict(LOGITS=f"*{ty}", TARGETS="*i64", WEIGHT="*fp32", DLOGITS="*fp32",
                                       PART="*fp32", LOSS="*fp32", SUMS="*fp64", COUNTER="*i32", B="i32", V="i32",
                                       tiles="i32", t_run_stride="i32", w_run_stride="i32", sums_rs="i32",
                                       sums_mode="i32", inv_b="fp32", HAS_WEIGHT="constexpr",
                                       STORE_GRAD="constexpr", BLOCK_B="constexpr", BLOCK_V="constexpr",
                                       BLOCK_T="constexpr"),
                        constexprs=dict(HAS_WEIGHT=has_weight, STORE_GRAD=store_grad, BLOCK_B=block_b,
                                        BLOCK_V=block_v, BLOCK_T=_REDUCE_BLOCK), num_warps=warps))
    return specs
