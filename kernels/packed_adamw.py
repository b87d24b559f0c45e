"""AdamW (+ the Grokfast filter) over a pack of R runs: (R, ...) parameters, one row of hyperparameters per run.

``PackedAdamW(params, hyper)``: every parameter has a leading run axis R; ``hyper[r]`` is run r's
``dict(lr, betas, eps, weight_decay, grokfast_alpha, grokfast_lamb)`` (``grokfast_alpha=None``: no
filter for that run). Run r's slice of every parameter follows ``torch.optim.AdamW`` (+ Grokfast's EMA,
``h`` starting at the first gradient) with run r's settings: in the kernel, the arithmetic of ``FusedAdamW``;
on the rows path, that of the torch backend's solo run (below).

Layout, and why: the state lives in run-major flat buffers of shape (R, S) -- row r holds run r's slice
of every parameter, one after another, S padded to a multiple of ``BLOCK`` -- and every parameter
(and its ``.grad``) is rebound to a strided view of them (run stride S, each run's slice contiguous).
So each program of ``FusedAdamW``'s kernel covers one block of ONE run, and the kernel's per-program
group table is simply the run index: the same kernel, one launch for the whole pack, per-run
hyperparameters read from a (R, 8) device table. A run's state is one row: its weight norm, a freeze
(``freeze(r)``) and its checkpoint slice are single row operations.

CUDA tensors run the Triton kernel (``TRITON_INTERPRET=1`` runs it on CPU too); CPU tensors, or
``kernel=False``, the rows path: each run's update with its own settings, in the arithmetic of the torch
backend's solo runs (``GrokfastEMA``, then torch's fused AdamW). A pack that computes its runs one at a
time hands each run's gradients straight to that update (``step_runs``): on the CPU, where a run-step of
the paper's IMDB model is ~26 ms, copying its 4.2 M gradients into the buffer first cost ~1 ms of it.
The step count t is shared by the pack (all runs step together) and lives on the device, as the
hyperparameters do, so a kernel step is capturable in a CUDA graph.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Iterable

import torch
import triton

from ._dispatch import check_dtype, use_triton
from .adamw import BLOCK, NUM_WARPS, _check_hyper, _fused_adamw_kernel
from ._pdl import pdl

_STATE = ("exp_avg", "exp_avg_sq", "grokfast_h")
# A parameter rebound to a strided view of the run-major buffer has its gradient accumulated in place;
# torch warns that the layout is not dense. That is the layout this optimiser is built on.
warnings.filterwarnings("ignore", message="grad and param do not obey the gradient layout contract")


def _row(h: dict[str, Any]) -> tuple[float, ...]:
    """One run's row of the kernel's table: lr, beta1, beta2, eps, weight decay, alpha, lamb (0, 0: no filter)."""
    a = h.get("grokfast_alpha")
    betas = tuple(h.get("betas", (0.9, 0.999)))
    row = dict(lr=h.get("lr", 1e-3), eps=h.get("eps", 1e-8), weight_decay=h.get("weight_decay", 1e-2),
               lamb=h.get("grokfast_lamb", 0.0))
    _check_hyper(row["lr"], betas, row["eps"], row["weight_decay"], a, row["lamb"])
    return (float(row["lr"]), float(betas[0]), float(betas[1]), float(row["eps"]), float(row["weight_decay"]),
            0.0 if a is None else float(a), 0.0 if a is None else float(row["lamb"]), 0.0)


class PackedAdamW:
    def __init__(self, params: Iterable[torch.nn.Parameter], hyper: list[dict[str, Any]],
                 kernel: bool | None = None):
        """``kernel``: run the Triton kernel (True) or the PyTorch rows (False); default by device
        (``use_triton``: CUDA, or the CPU under ``TRITON_INTERPRET=1``)."""
        self.params = list(params)
        R = len(hyper)
        if R < 1 or not self.params:
            raise ValueError("PackedAdamW: needs at least one run and one parameter")
        device = self.params[0].device
        for p in self.params:
            check_dtype("PackedAdamW: a parameter", p, (torch.float32,))
            if p.dim() < 1 or p.shape[0] != R:
                raise ValueError(f"PackedAdamW: a parameter of shape {tuple(p.shape)} has no run axis of {R}")
            if p.device != device or not p.requires_grad:
                raise ValueError("PackedAdamW: parameters must be on one device and require grad")
        self.runs, self.device = R, device
        self.grokfast = any(h.get("grokfast_alpha") is not None for h in hyper)
        sizes = [p[0].numel() for p in self.params]
        offsets = [sum(sizes[:i]) for i in range(len(sizes))]
        self.stride = S = triton.cdiv(max(sum(sizes), 1), BLOCK) * BLOCK
        if R * S >= 2 ** 31:
            raise ValueError(f"PackedAdamW: {R} x {S} elements; supported: fewer than 2**31")
        names = ("param", "grad", "exp_avg", "exp_avg_sq") + (("grokfast_h",) if self.grokfast else ())
        self.flat = {k: torch.zeros(R, S, dtype=torch.float32, device=device) for k in names}
        # one view per parameter of each flat buffer: (R, *shape), run stride S, each run's slice contiguous
        self.views: dict[str, list[torch.Tensor]] = {k: [] for k in names}
        for p, off in zip(self.params, offsets):
            inner = torch.empty(p.shape[1:]).stride() if p.dim() > 1 else ()
            for k in names:
                self.views[k].append(self.flat[k].as_strided(p.shape, (S, *inner), off))
        with torch.no_grad():
            for p, pv, gv in zip(self.params, self.views["param"], self.views["grad"]):
                pv.copy_(p.detach())
                p.data = pv
                p.grad = gv
        programs_per_run = S // BLOCK
        self._steps = torch.zeros(R * programs_per_run, dtype=torch.int32, device=device)
        self._run_of = torch.arange(R, dtype=torch.int32).repeat_interleave(programs_per_run).to(device)
        self.rows = [_row(h) for h in hyper]
        self._hyper = torch.tensor(self.rows, dtype=torch.float64).to(device)
        self.kernel = use_triton(self.flat["param"]) if kernel is None else kernel
        self.frozen: set[int] = set()

    # ------------------------------------------------------------------ hyperparameters
    def set_run(self, r: int, **hyper: Any) -> None:
        """Change run r's hyperparameters (lr, weight_decay, ...); a device write, no host sync."""
        keys = ("lr", "beta1", "beta2", "eps", "weight_decay", "grokfast_alpha", "grokfast_lamb")
        row = list(self.rows[r])
        for k, v in hyper.items():
            row[keys.index(k)] = float(v)
        self.rows[r] = tuple(row)
        self._hyper[r].copy_(torch.tensor(row, dtype=torch.float64), non_blocking=True)

    @torch.no_grad()
    def freeze(self, r: int) -> None:
        """Take run r out of training for good: its weights and state are zeroed and its lr, weight decay
        and filter gain set to 0, so it computes finite zeros from now on and never touches the others."""
        self.set_run(r, lr=0.0, weight_decay=0.0, grokfast_lamb=0.0)
        self.frozen.add(r)
        for buf in self.flat.values():
            buf[r].zero_()

    # ------------------------------------------------------------------ the step
    def grad_views(self) -> dict[torch.Tensor, torch.Tensor]:
        """Each parameter's (strided) view of the run-major gradient buffer. A gradient written into its view,
        with ``.grad`` set to that very view, is where ``step()`` reads it (``deferred(into=...)``)."""
        return dict(zip(self.params, self.views["grad"]))

    def zero_grad(self, set_to_none: bool = True) -> None:
        """``set_to_none`` (the default): drop ``.grad``, so the next backward writes each gradient into its view
        (``grad_views``), or hands over a tensor that ``step()`` copies in. ``False``: zero the buffer and keep
        the views, for autograd to add into."""
        for p, gv in zip(self.params, self.views["grad"]):
            p.grad = None if set_to_none else gv
        if not set_to_none:
            self.flat["grad"].zero_()

    @torch.no_grad()
    def set_run_grads(self, r: int, grads: list[torch.Tensor]) -> None:
        """Write run r's gradients (one per parameter, shaped like its solo parameter) into its row: for a
        pack whose runs compute one at a time, their gradients copied in once instead of a zeroed buffer
        accumulated into. A dropped ``.grad`` (``zero_grad()``) is bound to its view again, zeroed: the other
        runs' rows then hold zeros, as after ``zero_grad(set_to_none=False)``."""
        for p, view, g in zip(self.params, self.views["grad"], grads, strict=True):
            if p.grad is None:
                p.grad = view.zero_()
            view[r].copy_(g)

    @torch.no_grad()
    def step(self) -> None:
        for p, gv in zip(self.params, self.views["grad"]):
            if p.grad is not gv:  # a gradient of its own (or none: zeros) into the buffer
                gv.zero_() if p.grad is None else gv.copy_(p.grad)
                p.grad = gv
        f = self.flat
        if self.kernel:
            _fused_adamw_kernel[(self._steps.numel(),)](
                f["param"], f["grad"], f["exp_avg"], f["exp_avg_sq"], f.get("grokfast_h", f["exp_avg"]),
                self._steps, self._run_of, self._hyper, BLOCK=BLOCK, GROKFAST=self.grokfast, num_warps=NUM_WARPS,
                **pdl(self._steps))
        else:
            self._step_rows()

    def step_runs(self, grads_of: Callable[[int], list[torch.Tensor]], runs: Iterable[int]) -> None:
        """One step of a pack whose runs make their gradients one at a time (the CPU's run by run):
        ``grads_of(r)`` returns run r's, one per parameter, shaped like its solo parameters, for each r of
        ``runs`` in turn. The rows path updates run r from them at once, so nothing is copied into the
        buffer and no run's gradients outlive it; the kernel takes them copied into the buffer, then one
        launch."""
        if self.kernel:
            for r in runs:
                self.set_run_grads(r, grads_of(r))
            self.step()
            return
        t, step = self._next_step()
        for r in runs:
            if r not in self.frozen:
                self._update_run(r, grads_of(r), t, step)
        self._steps.add_(1)  # counted once every run has stepped (a callback that raises leaves the count)

    def _step_rows(self) -> None:
        """The rows path of ``step()``: each live run updated from its row of the gradient buffer."""
        t, step = self._next_step()
        for r in range(self.runs):
            if r not in self.frozen:
                self._update_run(r, [g[r] for g in self.views["grad"]], t, step)
        self._steps.add_(1)

    def _next_step(self) -> tuple[int, torch.Tensor]:
        """This step's number t (1-based), and t as the fused op reads it: one tensor per step, on the device."""
        t = int(self._steps[0]) + 1
        return t, torch.tensor(float(t), device=self.device)

    @torch.no_grad()
    def _update_run(self, r: int, grads: list[torch.Tensor], t: int, step: torch.Tensor) -> None:
        """Run r's update, as the torch backend's solo run makes it: ``GrokfastEMA``'s filter (h starts at the
        first gradient, then ``lerp``), then torch's fused AdamW (``torch.optim.AdamW(fused=True)``'s one
        pass), on per-parameter views of run r's rows. So run r of a pack on this path takes its solo run's
        steps bit for bit (tests/kernels/test_packed_adamw.py); the kernel's arithmetic (``FusedAdamW``'s)
        differs from it by rounding."""
        lr, b1, b2, eps, wd, alpha, lamb, _ = self.rows[r]
        if len(grads) != len(self.params):
            raise ValueError(f"PackedAdamW: run {r} has {len(grads)} gradients for {len(self.params)} parameters")
        grads = [g.contiguous() for g in grads]  # the fused op reads each as dense (autograd's already are)
        row = {k: [v[r] for v in views] for k, views in self.views.items() if k != "grad"}
        if alpha or lamb:  # a filter (GrokfastEMA keeps h up to date even at lamb 0, as the kernel does)
            h = row["grokfast_h"]
            if t == 1:
                torch._foreach_copy_(h, grads)
            else:
                torch._foreach_lerp_(h, grads, 1.0 - alpha)
            grads = torch._foreach_add(grads, h, alpha=lamb)
        torch._fused_adamw_(row["param"], grads, row["exp_avg"], row["exp_avg_sq"], [], [step] * len(grads),
                            lr=lr, beta1=b1, beta2=b2, weight_decay=wd, eps=eps, amsgrad=False, maximize=False)

    # ------------------------------------------------------------------ state
    @property
    def step_count(self) -> int:
        return int(self._steps[0])

    def run_state(self, r: int) -> dict[str, list[torch.Tensor]]:
        """Run r's optimiser state, per parameter, shaped like its solo parameters (CPU copies)."""
        return {k: [t[r].detach().cpu().clone() for t in self.views[k]] for k in _STATE if k in self.views}

    @torch.no_grad()
    def load_run_state(self, r: int, state: dict[str, list[torch.Tensor] | None]) -> None:
        """Set run r's state from per-parameter tensors (a missing or None entry: zeros)."""
        for k in _STATE:
            if k not in self.views:
                continue
            tensors = state.get(k)
            for i, view in enumerate(self.views[k]):
                if tensors is None:
                    view[r].zero_()
                else:
                    view[r].copy_(tensors[i])

    def set_step_count(self, t: int) -> None:
        self._steps.fill_(t)

    def weight_norms(self, out: torch.Tensor | None = None) -> torch.Tensor:
        """Each run's L2 weight norm, (R,) fp32 on the device, or written into ``out`` (the padding is zero and
        adds nothing)."""
        return torch.linalg.vector_norm(self.flat["param"], dim=1, out=out)
