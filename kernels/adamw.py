"""AdamW with decoupled weight decay -- and, optionally, the Grokfast EMA gradient filter -- in one launch.

``FusedAdamW(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, grokfast_alpha=None,
grokfast_lamb=0.0)`` is a ``torch.optim.Optimizer`` with the arithmetic of ``torch.optim.AdamW``
(its single-tensor path), for step t = 1, 2, ...:

    [Grokfast, when grokfast_alpha is not None]  h <- g if t == 1 else alpha*h + (1-alpha)*g ;  g <- g + lamb*h
    p <- p * (1 - lr*wd)
    m <- m + (1-beta1)*(g - m)                       (= beta1*m + (1-beta1)*g, torch's lerp_)
    v <- beta2*v + (1-beta2)*g*g
    p <- p - lr/(1-beta1^t) * m / (sqrt(v)/sqrt(1-beta2^t) + eps)

The scalars (1 - lr*wd, lr/(1-beta1^t), sqrt(1-beta2^t)) are computed in fp64 and rounded once to
fp32, as torch computes them in Python doubles; the element-wise part is fp32 with IEEE-rounded
sqrt and divisions. The filtered gradient is used for the update but not written back to ``.grad``.

Layout: at construction every parameter is copied into ONE flat fp32 buffer and ``p.data`` becomes a
view of it; the kernel reads the gradients from one flat buffer too (each ``p.grad`` a view of it
after ``step()``; ``zero_grad`` says how they get there), and exp_avg, exp_avg_sq and the Grokfast EMA
``h`` are flat buffers too. Each param group starts at a multiple of ``BLOCK`` elements, so one program = one block of one
group, and the padding (always zero: zero gradient keeps zero parameters at zero) needs no masks.

Bytes per parameter per step (fp32): read p, g, m, v (16 B) + write p, m, v (12 B) = 28 B; with the
Grokfast filter also read + write h: 36 B. For the paper's 4.2 M-parameter encoder: 118 MB (151 MB
with the filter) per step, ~40 us (~50 us) at an H100's ~3 TB/s, in one launch; gathering the
gradients into the flat buffer reads and writes 8 B/param more. An eager per-tensor AdamW launches ~10 kernels per parameter tensor and moves
~2-3x these bytes.

Device-resident state (what makes the step capturable in a CUDA graph, with no host sync):
- the step count: one int32 per program (``_steps``), which no other program touches. The program
  reads and increments it with ONE atomic add that returns the old value: Triton performs a scalar
  atomic in a single thread and hands its result to the whole block through shared memory behind a
  barrier, so every thread uses the same t and the count goes up by exactly one per step. (A plain
  load by every thread followed by one thread's store, with nothing between, let a warp scheduled
  after the store read t + 1: its elements took the next step's bias correction, and at t = 1 with
  the filter on skipped ``h = g``.) No second launch. ``state_dict`` reports it as torch's ``step``.
- hyperparameters: a (groups, 8) fp64 table (lr, beta1, beta2, eps, weight_decay, grokfast alpha,
  grokfast lamb) read inside the kernel. ``step()`` compares ``param_groups`` with what it last
  uploaded and uploads changes (a host->device copy, never a device->host read). Under CUDA-graph
  capture nothing is uploaded; change the lr of a captured step with ``set_lr(lr)`` (or write
  ``lr_tensor()``) between replays -- see ``set_lr``.

On CPU (without ``TRITON_INTERPRET=1``) ``step()`` runs ``adamw_reference_step`` on the same flat
buffers. Only fp32 parameters, all on one device, all requiring grad, are supported. AMSGrad,
``maximize`` and sparse gradients are not. A parameter whose ``.grad`` is None at ``step()`` is
updated with a zero gradient (torch.optim.AdamW with ``zero_grad(set_to_none=False)`` does the same;
with ``set_to_none=True`` it would skip the parameter).
"""

from __future__ import annotations

from typing import Any, Iterable

import torch
import triton
import triton.language as tl
from torch.optim import Optimizer

from ._compile import CompileSpec
from ._dispatch import check_dtype, use_triton
from ._pdl import enter, pdl

SUPPORTED_DTYPES = (torch.float32,)
BLOCK = 2048  # elements per program: 8 per thread at 8 warps (two 16-byte accesses per array)
NUM_WARPS = 8
_HYPER = ("lr", "beta1", "beta2", "eps", "weight_decay", "grokfast_alpha", "grokfast_lamb")
_HYPER_COLS = 8  # the table's row stride (one spare column)


@triton.jit
def _fused_adamw_kernel(param_ptr, grad_ptr, exp_avg_ptr, exp_avg_sq_ptr, h_ptr, step_ptr, group_ptr, hyper_ptr,
                        BLOCK: tl.constexpr, GROKFAST: tl.constexpr, PDL: tl.constexpr = False):
    enter(PDL)
    pid = tl.program_id(0)
    # This program's step counter: read and incremented by ONE atomic, which returns the old value. Not a
    # plain load + store: every thread loads, one thread stores, and a warp that loads after that store
    # would use t + 1. The PTX (sm_80 and sm_90, Triton 3.6 and 3.9) has exactly one atom.global, executed
    # by thread 0 only, its result stored to shared memory, bar.sync, then read by every thread; the
    # compile check counts the atom.global (compile_specs). Relaxed: it orders no other access, and the
    # next launch sees it.
    t = tl.atomic_add(step_ptr + pid, 1, sem="relaxed") + 1
    hp = hyper_ptr + tl.load(group_ptr + pid) * 8
    lr = tl.load(hp + 0)
    beta1 = tl.load(hp + 1)
    beta2 = tl.load(hp + 2)
    eps = tl.load(hp + 3)
    wd = tl.load(hp + 4)

    # beta^t in fp64 by square-and-multiply (log2(t) iterations; torch evaluates beta**t in doubles).
    pw1 = beta1 * 0.0 + 1.0
    pw2 = beta2 * 0.0 + 1.0
    b1 = beta1
    b2 = beta2
    e = t
    while e > 0:
        odd = (e & 1) == 1
        pw1 = tl.where(odd, pw1 * b1, pw1)
        pw2 = tl.where(odd, pw2 * b2, pw2)
        b1 = b1 * b1
        b2 = b2 * b2
        e = e >> 1
    step_size = (lr / (1.0 - pw1)).to(tl.float32)
    bc2_sqrt = tl.sqrt(1.0 - pw2).to(tl.float32)
    decay = (1.0 - lr * wd).to(tl.float32)
    w1 = (1.0 - beta1).to(tl.float32)
    beta2_f = beta2.to(tl.float32)
    c2 = (1.0 - beta2).to(tl.float32)
    eps_f = eps.to(tl.float32)

    offs = pid * BLOCK + tl.arange(0, BLOCK)
    p = tl.load(param_ptr + offs)
    g = tl.load(grad_ptr + offs)
    m = tl.load(exp_avg_ptr + offs)
    v = tl.load(exp_avg_sq_ptr + offs)
    if GROKFAST:
        ga = tl.load(hp + 5)
        glamb = tl.load(hp + 6).to(tl.float32)
        h = tl.load(h_ptr + offs)
        h = tl.where(t == 1, g, h * ga.to(tl.float32) + g * (1.0 - ga).to(tl.float32))
        tl.store(h_ptr + offs, h)
        g = g + glamb * h
    p = p * decay
    # torch's lerp_(g, w1) on CPU: fmadd(w1, g - m, m) for w1 < 0.5, else fmadd(w1 - 1, g - m, g)
    d = g - m
    m = tl.where(w1 < 0.5, tl.fma(w1, d, m), tl.fma(w1 - 1.0, d, g))
    v = tl.fma(c2 * g, g, v * beta2_f)  # torch's mul_(beta2).addcmul_(g, g, value=1-beta2) on CPU
    denom = tl.div_rn(tl.sqrt_rn(v), bc2_sqrt) + eps_f
    p = p - step_size * tl.div_rn(m, denom)
    tl.store(param_ptr + offs, p)
    tl.store(exp_avg_ptr + offs, m)
    tl.store(exp_avg_sq_ptr + offs, v)


def _as_list(x):
    if x is None:
        return None
    return [x] if isinstance(x, torch.Tensor) else list(x)


@torch.no_grad()
def adamw_reference_step(params, grads, exp_avgs, exp_avg_sqs, step: int, *, lr: float, beta1: float,
                         beta2: float, eps: float, weight_decay: float, grokfast_h=None,
                         grokfast_alpha: float | None = None, grokfast_lamb: float = 0.0) -> None:
    """One AdamW update in place, with torch.optim.AdamW's single-tensor arithmetic -- the executable spec.

    ``params, grads, exp_avgs, exp_avg_sqs`` (and ``grokfast_h``): tensors or equal-length lists of
    tensors (flat buffers or per-parameter). ``step``: the 1-based number of this update (t).
    With ``grokfast_alpha`` not None the Grokfast EMA ``grokfast_h`` is updated first
    (``h = g`` at t == 1, else ``h = alpha*h + (1-alpha)*g``) and ``g + lamb*h`` drives the update;
    the gradients themselves are left unchanged.
    """
    params, grads = _as_list(params), _as_list(grads)
    exp_avgs, exp_avg_sqs, hs = _as_list(exp_avgs), _as_list(exp_avg_sqs), _as_list(grokfast_h)
    if grokfast_alpha is not None and hs is None:
        raise ValueError("adamw_reference_step: grokfast_alpha needs grokfast_h buffers")
    bias_correction1 = 1 - beta1 ** step
    bias_correction2 = 1 - beta2 ** step
    step_size = lr / bias_correction1
    bias_correction2_sqrt = bias_correction2 ** 0.5
    for i, (p, g, m, v) in enumerate(zip(params, grads, exp_avgs, exp_avg_sqs, strict=True)):
        if grokfast_alpha is not None:
            h = hs[i]
            if step == 1:
                h.copy_(g)
            else:
                h.mul_(grokfast_alpha).add_(g, alpha=1 - grokfast_alpha)
            g = g.add(h, alpha=grokfast_lamb)
        p.mul_(1 - lr * weight_decay)
        m.lerp_(g, 1 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        denom = (v.sqrt() / bias_correction2_sqrt).add_(eps)
        p.addcdiv_(m, denom, value=-step_size)


def _check_hyper(lr, betas, eps, weight_decay, grokfast_alpha, grokfast_lamb) -> None:
    for name, val in (("lr", lr), ("eps", eps), ("weight_decay", weight_decay), ("grokfast_lamb", grokfast_lamb)):
        if isinstance(val, torch.Tensor) or not isinstance(val, (int, float)):
            raise ValueError(f"FusedAdamW: {name} must be a Python number, got {type(val).__name__} "
                             f"(for a device-side lr use FusedAdamW.lr_tensor())")
        if val < 0:
            raise ValueError(f"FusedAdamW: invalid {name} {val}; supported: >= 0")
    if len(betas) != 2 or not all(isinstance(b, (int, float)) and 0.0 <= b < 1.0 for b in betas):
        raise ValueError(f"FusedAdamW: invalid betas {betas}; supported: two numbers in [0, 1)")
    if grokfast_alpha is not None and not (isinstance(grokfast_alpha, (int, float)) and 0.0 <= grokfast_alpha < 1.0):
        raise ValueError(f"FusedAdamW: invalid grokfast_alpha {grokfast_alpha}; supported: None or a number in [0, 1)")


class FusedAdamW(Optimizer):
    """torch.optim.AdamW (+ optional Grokfast filter) over one flat fp32 buffer, one launch per step.

    ``opt.zero_grad()`` drops the ``.grad`` views; ``step()`` gathers the new gradients into the flat
    buffer with one multi-tensor copy (see ``zero_grad``). ``zero_grad(set_to_none=False)`` keeps the
    views, zeroed, for autograd to accumulate into. Either way ``.grad`` is a view of the flat buffer
    after ``step()``.
    """

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2, grokfast_alpha: float | None = None,
                 grokfast_lamb: float = 0.0):
        _check_hyper(lr, tuple(betas), eps, weight_decay, grokfast_alpha, grokfast_lamb)
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                        grokfast_alpha=grokfast_alpha, grokfast_lamb=grokfast_lamb)
        self._built = False
        super().__init__(params, defaults)
        self._build()

    # ---------------------------------------------------------------- construction
    def add_param_group(self, param_group: dict) -> None:
        if getattr(self, "_built", False):
            raise ValueError("FusedAdamW: param groups are fixed at construction (the flat buffer is laid out "
                             "then); pass every group to the constructor")
        super().add_param_group(param_group)

    def _build(self) -> None:
        params = [p for g in self.param_groups for p in g["params"]]
        if not params:
            raise ValueError("FusedAdamW: got no parameters")
        if len({id(p) for p in params}) != len(params):
            raise ValueError("FusedAdamW: a parameter appears twice")
        devices = {p.device for p in params}
        if len(devices) != 1:
            raise ValueError(f"FusedAdamW: parameters are on several devices {sorted(map(str, devices))}; "
                             f"supported: all on one device")
        for p in params:
            check_dtype("FusedAdamW: a parameter", p, SUPPORTED_DTYPES)
            if not p.requires_grad:
                raise ValueError("FusedAdamW: a parameter does not require grad; pass only trainable parameters")
            if p.grad is not None and p.grad.is_sparse:
                raise ValueError("FusedAdamW: sparse gradients are not supported")
        for g in self.param_groups:
            _check_hyper(g["lr"], tuple(g["betas"]), g["eps"], g["weight_decay"], g["grokfast_alpha"],
                         g["grokfast_lamb"])
        device = params[0].device
        self._device = device
        self._grokfast = any(g["grokfast_alpha"] is not None for g in self.param_groups)

        # Layout: groups one after another, each padded to a multiple of BLOCK.
        offsets, group_ranges, total = [], [], 0
        for g in self.param_groups:
            start = total
            for p in g["params"]:
                offsets.append(total)
                total += p.numel()
            total = start + triton.cdiv(total - start, BLOCK) * BLOCK
            group_ranges.append((start, total))
        if total >= 2 ** 31:
            raise ValueError(f"FusedAdamW: {total} elements; supported: fewer than 2**31")
        self._numel = total
        self._num_programs = total // BLOCK
        self._group_ranges = group_ranges

        with torch.no_grad():
            zeros = lambda: torch.zeros(total, dtype=torch.float32, device=device)  # noqa: E731
            self._flat_param, self._flat_grad = zeros(), zeros()
            self._exp_avg, self._exp_avg_sq = zeros(), zeros()
            self._h = zeros() if self._grokfast else None
            self._steps = torch.zeros(self._num_programs, dtype=torch.int32, device=device)
            prog_group = torch.empty(self._num_programs, dtype=torch.int32)
            for gi, (start, end) in enumerate(group_ranges):
                prog_group[start // BLOCK:end // BLOCK] = gi
            self._prog_group = prog_group.to(device)
            self._hyper = torch.zeros(len(self.param_groups), _HYPER_COLS, dtype=torch.float64, device=device)
            self._pushed: list[tuple] | None = None

            self._bindings = []  # (param, param view, grad view, data_ptr of the view)
            for p, off in zip(params, offsets):
                n = p.numel()
                pv = self._flat_param[off:off + n].view(p.shape)
                gv = self._flat_grad[off:off + n].view(p.shape)
                pv.copy_(p.detach())
                if p.grad is not None:
                    gv.copy_(p.grad)
                p.data = pv
                p.grad = gv
                self._bindings.append((p, pv, gv, pv.data_ptr()))
                st = self.state[p]
                st["exp_avg"] = self._exp_avg[off:off + n].view(p.shape)
                st["exp_avg_sq"] = self._exp_avg_sq[off:off + n].view(p.shape)
                if self._h is not None:
                    st["grokfast_h"] = self._h[off:off + n].view(p.shape)
            for (start, _), g in zip(group_ranges, self.param_groups):
                for p in g["params"]:
                    self.state[p]["step"] = self._steps[start // BLOCK]  # a 0-dim view, int32
        self._built = True
        self._push_hyper()

    # ---------------------------------------------------------------- hyperparameters
    def _rows(self) -> list[tuple]:
        rows = []
        for g in self.param_groups:
            _check_hyper(g["lr"], tuple(g["betas"]), g["eps"], g["weight_decay"], g["grokfast_alpha"],
                         g["grokfast_lamb"])
            a = g["grokfast_alpha"]
            rows.append((float(g["lr"]), float(g["betas"][0]), float(g["betas"][1]), float(g["eps"]),
                         float(g["weight_decay"]), 0.0 if a is None else float(a),
                         0.0 if a is None else float(g["grokfast_lamb"]), 0.0))
        return rows

    def _push_hyper(self) -> None:
        rows = self._rows()
        if rows == self._pushed:
            return
        if self._device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            raise RuntimeError("FusedAdamW: param_groups changed during CUDA-graph capture; run step() once "
                               "before capturing, and change the lr of a captured step with set_lr()")
        # non_blocking: from pageable memory the driver stages the source at once and never waits for
        # the stream (a blocking copy_ would synchronise the stream, i.e. a host sync per lr change)
        self._hyper.copy_(torch.tensor(rows, dtype=torch.float64), non_blocking=True)
        self._pushed = rows

    def lr_tensor(self, group: int = 0) -> torch.Tensor:
        """The device-resident lr of a param group (a 0-dim fp64 view that the kernel reads every step).

        Writing it (``opt.lr_tensor().fill_(x)`` or ``.copy_(t)``) changes the lr of the next launch,
        eager or replayed from a CUDA graph; prefer ``set_lr``, which also keeps ``param_groups`` in step.
        """
        return self._hyper[group, 0]

    def set_lr(self, lr: float, group: int | None = None) -> None:
        """Set the lr of one group (or all), in ``param_groups`` and on the device, without a host sync.

        Safe between CUDA-graph replays: the captured kernel reads the lr from the device each replay.
        (Setting ``param_groups[i]['lr']`` also works for eager steps: ``step()`` uploads it.)
        """
        groups = range(len(self.param_groups)) if group is None else [group]
        for gi in groups:
            _check_hyper(lr, tuple(self.param_groups[gi]["betas"]), 0.0, 0.0, None, 0.0)
            self.param_groups[gi]["lr"] = lr
            self._hyper[gi, 0].fill_(float(lr))
        if self._pushed is not None:
            self._pushed = [(float(lr),) + row[1:] if gi in groups else row for gi, row in enumerate(self._pushed)]

    # ---------------------------------------------------------------- the step
    def _rebind(self) -> None:
        """Point ``p.data`` and ``p.grad`` back at the flat buffers (a host-side check). Gradients that
        autograd handed over as tensors of their own (after ``zero_grad()``) are gathered into the flat
        gradient with one multi-tensor copy; a parameter without one gets zeros."""
        fresh, into, absent = [], [], []
        for p, pv, gv, ptr in self._bindings:
            if p.data_ptr() != ptr or p.shape != pv.shape:
                if p.dtype != torch.float32 or p.device != self._device or p.shape != pv.shape:
                    raise ValueError("FusedAdamW: a parameter's data was replaced by one of another "
                                     "dtype/device/shape; supported: float32 on the optimiser's device")
                pv.copy_(p.detach())
                p.data = pv
            g = p.grad
            if g is gv:
                continue
            if g is None:
                absent.append(gv)
            else:
                if g.is_sparse:
                    raise ValueError("FusedAdamW: sparse gradients are not supported")
                fresh.append(g)
                into.append(gv)
            p.grad = gv
        if fresh:
            torch._foreach_copy_(into, fresh)
        if absent:
            torch._foreach_zero_(absent)

    def holds(self, params) -> bool:
        """Whether the flat buffer holds exactly these parameters (each once)."""
        return {id(p) for p, _, _, _ in self._bindings} == {id(p) for p in params}

    def weight_norm(self, out: torch.Tensor | None = None) -> torch.Tensor:
        """The L2 norm of every parameter together, 0-dim fp32 on the device (or written into ``out``): one
        reduction over the flat buffer (the zeros between groups stay zero -- no gradient reaches them -- and
        add nothing)."""
        return torch.linalg.vector_norm(self._flat_param, out=out)

    def grad_views(self) -> dict[torch.Tensor, torch.Tensor]:
        """Each parameter's view of the flat gradient buffer. A gradient written into its view, with ``.grad``
        set to that very view, is where ``step()`` reads it: nothing to gather (``deferred(into=...)``)."""
        return {p: gv for p, _, gv, _ in self._bindings}

    def zero_grad(self, set_to_none: bool = True) -> None:
        """``set_to_none`` (the default): drop the ``.grad`` views. The next backward then gives each
        parameter a gradient tensor of its own, which autograd adopts without a kernel, and ``step()``
        gathers them all with one multi-tensor copy -- where accumulating into zeroed views costs a
        memset and one addition kernel per parameter (18 of the ~100 kernels of the modular step,
        ``scripts/kernel_census.py``). ``set_to_none=False``: zero the flat gradient in place (one
        memset) and keep the views, so that backward adds into them."""
        if set_to_none:
            for p, _, _, _ in self._bindings:
                p.grad = None
            return
        self._flat_grad.zero_()
        for p, _, gv, _ in self._bindings:
            if p.grad is not gv:
                p.grad = gv

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._rebind()
        self._push_hyper()
        if use_triton(self._flat_param):
            _fused_adamw_kernel[(self._num_programs,)](
                self._flat_param, self._flat_grad, self._exp_avg, self._exp_avg_sq,
                self._exp_avg if self._h is None else self._h, self._steps, self._prog_group, self._hyper,
                BLOCK=BLOCK, GROKFAST=self._grokfast, num_warps=NUM_WARPS, **pdl(self._flat_param))
        else:
            self._reference_step()
        return loss

    def _reference_step(self) -> None:
        self._steps.add_(1)
        t = int(self._steps[0])  # CPU tensor: no device sync
        for (start, end), g in zip(self._group_ranges, self.param_groups):
            a = g["grokfast_alpha"]
            sl = slice(start, end)
            adamw_reference_step(
                self._flat_param[sl], self._flat_grad[sl], self._exp_avg[sl], self._exp_avg_sq[sl], t,
                lr=g["lr"], beta1=g["betas"][0], beta2=g["betas"][1], eps=g["eps"],
                weight_decay=g["weight_decay"], grokfast_h=None if self._h is None else self._h[sl],
                grokfast_alpha=a, grokfast_lamb=g["grokfast_lamb"] if a is not None else 0.0)

    # ---------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict:
        """torch.optim.AdamW's format (per-parameter 'step', 'exp_avg', 'exp_avg_sq', plus 'grokfast_h'),
        with copies of the flat buffers (not views), so later steps do not change a saved dict."""
        if not (self._device.type == "cuda" and torch.cuda.is_current_stream_capturing()):
            self._push_hyper()
        lrs = self._hyper[:, 0].tolist()  # authoritative: lr_tensor() may have been written directly
        for g, lr in zip(self.param_groups, lrs):
            if float(g["lr"]) != lr:
                g["lr"] = lr
        self._pushed = self._rows()
        step = int(self._steps[0])
        state: dict[int, dict] = {}
        groups = []
        idx = 0
        for g in self.param_groups:
            packed = {k: v for k, v in g.items() if k != "params"}
            packed["params"] = list(range(idx, idx + len(g["params"])))
            groups.append(packed)
            for p in g["params"]:
                if step > 0:
                    st = self.state[p]
                    entry = {"step": torch.tensor(float(step), dtype=torch.float32),
                             "exp_avg": st["exp_avg"].clone(), "exp_avg_sq": st["exp_avg_sq"].clone()}
                    if self._h is not None:
                        entry["grokfast_h"] = st["grokfast_h"].clone()
                    state[idx] = entry
                idx += 1
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict) -> None:
        """Load a ``state_dict`` of FusedAdamW (or of torch.optim.AdamW) for the same parameter layout.
        Values are copied into the existing flat buffers, so views, kernels and captured graphs stay valid."""
        groups = state_dict["param_groups"]
        if len(groups) != len(self.param_groups):
            raise ValueError(f"FusedAdamW.load_state_dict: {len(groups)} param groups in the state, "
                             f"{len(self.param_groups)} here")
        saved_state = state_dict["state"]
        steps = set()
        plan = []
        for saved, g in zip(groups, self.param_groups):
            if len(saved["params"]) != len(g["params"]):
                raise ValueError("FusedAdamW.load_state_dict: parameter counts of the groups differ")
            for key, p in zip(saved["params"], g["params"]):
                st = saved_state.get(key)
                if st is not None:
                    for k in ("exp_avg", "exp_avg_sq"):
                        if tuple(st[k].shape) != tuple(p.shape):
                            raise ValueError(f"FusedAdamW.load_state_dict: {k} of shape {tuple(st[k].shape)} "
                                             f"for a parameter of shape {tuple(p.shape)}")
                    steps.add(int(float(st["step"])))
                else:
                    steps.add(0)
                plan.append((p, st))
        if len(steps) != 1:
            raise ValueError(f"FusedAdamW.load_state_dict: parameters are at different steps {sorted(steps)}; "
                             f"supported: one step count for all")
        step = steps.pop()
        if self._grokfast and step > 0 and any(st is None or "grokfast_h" not in st for _, st in plan):
            raise ValueError("FusedAdamW.load_state_dict: the Grokfast filter is on but the state has no "
                             "'grokfast_h' (a plain AdamW checkpoint?); it cannot be resumed exactly")
        with torch.no_grad():
            for p, st in plan:
                mine = self.state[p]
                for k in ("exp_avg", "exp_avg_sq") + (("grokfast_h",) if self._h is not None else ()):
                    if st is None or k not in st:
                        mine[k].zero_()
                    else:
                        mine[k].copy_(st[k])
            self._steps.fill_(step)
        for saved, g in zip(groups, self.param_groups):
            for k in ("lr", "betas", "eps", "weight_decay", "grokfast_alpha", "grokfast_lamb"):
                if k in saved:
                    g[k] = tuple(saved[k]) if k == "betas" else saved[k]
            if (g["grokfast_alpha"] is not None) and not self._grokfast:
                raise ValueError("FusedAdamW.load_state_dict: the state enables the Grokfast filter; "
                                 "construct the optimiser with grokfast_alpha to load it")
        self._pushed = None
        self._push_hyper()


def compile_specs() -> list[CompileSpec]:
    """The shipped configurations: fp32, BLOCK 2048, 8 warps; Grokfast filter off and on. The PTX must
    hold exactly one atomic (the step counter's; see the kernel)."""
    sig = dict(param_ptr="*fp32", grad_ptr="*fp32", exp_avg_ptr="*fp32", exp_avg_sq_ptr="*fp32", h_ptr="*fp32",
               step_ptr="*i32", group_ptr="*i32", hyper_ptr="*fp64", BLOCK="constexpr", GROKFAST="constexpr")
    return [CompileSpec(name=f"fused_adamw[BLOCK={BLOCK},fp32{',grokfast' if gf else ''}]", fn=_fused_adamw_kernel,
                        signature=sig, constexprs=dict(BLOCK=BLOCK, GROKFAST=gf), num_warps=NUM_WARPS,
                        ptx_counts=((r"\batom\.", 1),))
            for gf in (False, True)]
