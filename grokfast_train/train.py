"""The training loop: one run, from a resolved Config to summary.json.

Read top to bottom: set up (device, data, model, optimiser), then a loop that advances by
``train_step`` -- a function of device tensors only, launched op by op or replayed from a
CUDA graph (graph.py) -- with evaluation, logging and checkpointing at eval points, the only
places the host waits for the device (``loop.drive``: the schedule a pack shares).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import torch

import kernels
from kernels._dispatch import INTERPRET

from . import graph, heap, loop, precision, rundir
from .checkpoint import atomic_write, load_checkpoint, save_checkpoint, save_json
from .config import FULL_BATCH, Config
from .data import TaskData, load_task
from .errors import RunError, UsageError
from .loggers import open_loggers
from .metrics import (IntervalMeter, first_step, generalised_for, landmarks_text, summarize, weight_norm,
                      weight_norm_tensor)
from .models import build_model, ops, resolve_backend
from .models.deferred import deferred
from .optim import build_optimizer
from .progress import Reporter, format_eval
from .sampler import EpochSampler


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda asked for, but no CUDA device is available; use --device cpu or auto")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def check_backend(backend: str, device: torch.device) -> str:
    if backend == "triton" and device.type != "cuda" and not INTERPRET:
        raise UsageError("--backend triton needs a CUDA device (or TRITON_INTERPRET=1 to run the kernels "
                         "on the CPU, slowly); use --backend torch")
    return backend


class Run:
    runs_shape = ()  # the leading shape of per-run metrics: none for a run, (R,) for a pack

    def __init__(self, cfg: Config, log=print, task: TaskData | None = None):
        """``task`` skips data loading (a sweep or a benchmark that already holds the tensors)."""
        self.log = log
        self.device = resolve_device(cfg.device)
        # config.json records what actually ran: the device and backend that "auto" resolved to
        cfg = dataclasses.replace(cfg, device=self.device.type)
        cfg = dataclasses.replace(cfg, backend=check_backend(resolve_backend(cfg), self.device))
        self.cfg = cfg = dataclasses.replace(cfg, cuda_graph=graph.resolve_mode(cfg.cuda_graph, self.device,
                                                                                cfg.backend))
        self.dir = Path(cfg.out or rundir.default_out(cfg))
        # Locked: one process trains in a run directory at a time (until fit() ends or the process dies).
        self.lock = rundir.prepare(self.dir, cfg.resume, cfg.force)  # before any slow work: fail fast
        log(cfg.describe())

        self.task: TaskData = (task if task is not None else load_task(cfg, log=log)).to(self.device)
        log(f"train {self.task.train_x.shape[0]:,} of a pool of {self.task.pool_size:,}; "
            f"test {self.task.test_x.shape[0]:,}; sequence length {self.task.seq_len}")

        torch.manual_seed(cfg.seed)
        model = build_model(cfg, self.task)
        # Initialise on the CPU so that a seed gives the same initial weights on every device.
        kernels.scaled_init_(model, std=cfg.init_std, alpha=cfg.init_scale, seed=cfg.seed)
        self.model = model.to(self.device).train()
        self.opt, self.grad_filter = build_optimizer(cfg, self.model, cfg.backend)
        self.grad_views = self.opt.grad_views() if cfg.backend == "triton" else {}  # FusedAdamW's
        self._norm_from_optimizer = cfg.backend == "triton" and self.opt.holds(self.model.parameters())
        n_train = self.task.train_x.shape[0]
        batch = n_train if cfg.batch_size == FULL_BATCH else cfg.batch_size
        self.sampler = EpochSampler(n_train, batch, cfg.seed, self.device, cfg.order)
        self.meter = IntervalMeter(self.device)
        # the backward's seed, made once: loss.backward() would launch a fill for it every step
        self.seed = kernels.unit_seed((), self.device)  # (and the loss's backward skips its product by it)
        # The step and the evaluation: launched op by op, or replayed from captured CUDA graphs.
        if cfg.cuda_graph == "on":
            self.stepper = graph.GraphSteps(self)
            self.test_sums = graph.GraphEval(self, pool=self.stepper.pool)
        else:
            self.stepper = graph.EagerSteps(self)
            self.test_sums = graph.GraphEval(self).eager  # the same evaluation, op by op
        self.step = 0
        self.history: list[dict] = []
        self.elapsed_s = 0.0  # training wall time over all sessions of this run
        self.saved_step: int | None = None  # step of the checkpoint on disk
        if self.device.type == "cpu":
            heap.keep_freed_memory()  # every step's tensors reused, not faulted in afresh (heap.py)

    # -- the step ---------------------------------------------------------------------------
    def autocast(self):
        """The forward's compute dtype: nothing for fp32, bf16 autocast for bf16 (precision.py)."""
        return precision.autocast(self.device, self.cfg.dtype)

    def train_step(self) -> None:
        task = self.task
        x, y, mask = self.sampler.draw(task.train_x, task.train_y, task.train_mask)
        # triton: the linear layers' weight gradients, all in one launch after the backward (models/deferred.py)
        # (and every gradient written where the optimiser reads it: nothing to gather)
        with deferred(on=self.cfg.backend == "triton", into=self.grad_views):
            with self.autocast():
                logits = self.model(x, mask)
            loss = self.meter.loss(logits, y, self.cfg.backend)  # fp32 whatever the logits' dtype
            self.opt.zero_grad()
            loss.backward(self.seed)
        if self.grad_filter is not None:
            self.grad_filter.apply_()
        self.opt.step()

    def eval_chunk(self, rows: torch.Tensor | None, weight: torch.Tensor, sums: torch.Tensor,
                   accumulate: bool = True, counter: torch.Tensor | None = None) -> None:
        """Adds (``accumulate=False``: sets) [loss sum, correct, rows] over the test rows ``rows`` (None: all) of
        nonzero ``weight`` to ``sums`` (GraphEval's chunk; ``counter``, the loss kernel's scratch). On triton the
        forward takes the step's fused products (``deferred``, with no gradient to defer)."""
        x, y, mask = graph.test_rows(self.task, rows)
        with deferred(on=self.cfg.backend == "triton"), self.autocast():
            logits = self.model(x, mask)
        ops.cross_entropy(logits, y, weight, sums, self.cfg.backend, accumulate, counter)

    def weight_norms(self, out: torch.Tensor) -> None:
        """The L2 norm of every weight into ``out`` (fp32, 0-dim): one reduction over FusedAdamW's flat buffer,
        which holds each parameter (a tied one once) and zeros between groups."""
        if self._norm_from_optimizer:
            self.opt.weight_norm(out=out)
        else:
            out.copy_(weight_norm_tensor(self.model.parameters()))

    # -- state ------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "step": self.step,
            "model": self.model.state_dict(),
            "optimizer": self.opt.state_dict(),
            "grad_filter": None if self.grad_filter is None else self.grad_filter.state_dict(),
            "sampler": self.sampler.state_dict(),
            "meter": self.meter.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
            "history": self.history,
            "elapsed_s": self.elapsed_s,
            "config": dataclasses.asdict(self.cfg),
        }

    def load_state_dict(self, state: dict) -> None:
        try:
            self.model.load_state_dict(state["model"])
            self.opt.load_state_dict(state["optimizer"])
            if self.grad_filter is not None:
                self.grad_filter.load_state_dict(state["grad_filter"])
            self.sampler.load_state_dict(state["sampler"])
            self.meter.load_state_dict(state["meter"])
            torch.set_rng_state(state["torch_rng"])
            if state["cuda_rng"] is not None and self.device.type == "cuda":
                torch.cuda.set_rng_state(state["cuda_rng"], self.device)
            self.step, self.history, self.elapsed_s = state["step"], state["history"], state["elapsed_s"]
            self.saved_step = self.step
        except (KeyError, RuntimeError, TypeError, ValueError) as e:
            detail = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise RunError(f"checkpoint in {self.dir} does not match this run's model or optimiser ({detail}); "
                           f"resume it with the settings and version of grokfast-train that wrote it") from None

    def save(self) -> None:
        save_checkpoint(self.dir, self.state_dict())
        self.saved_step = self.step

    # -- evaluation -------------------------------------------------------------------------
    def evaluate(self, elapsed_s: float) -> dict:
        test, norm = self.test_sums()  # queued: [test loss sum, correct, rows] and the weight norm, read after
        train_loss, train_acc = self.meter.read_and_reset()  # the meter's sync
        (test_loss_sum, correct, _), norm = test.tolist(), norm.item()
        n = self.task.test_x.shape[0]
        return {"step": self.step, "train_acc": train_acc, "train_loss": train_loss, "test_acc": correct / n,
                "test_loss": test_loss_sum / n, "weight_norm": norm, "elapsed_s": round(elapsed_s, 3)}

    # -- advancing --------------------------------------------------------------------------
    def advance(self, limit: int) -> int:
        """Take at most ``limit`` steps (one, or a replay of several); returns how many were taken."""
        self.sampler.prepare(self.step)  # host work (a new epoch's order) stays outside the step
        n = self.stepper(limit)
        self.step += n
        return n

    # -- the loop ---------------------------------------------------------------------------
    def fit(self) -> dict | None:
        """Train to cfg.steps; returns the summary, or None when stopped by Ctrl-C (checkpoint saved)."""
        try:
            self._start()
            return self._train()
        finally:
            self.lock.release()

    def _start(self) -> None:
        """Load the checkpoint of a resumed run; (re)write config.json and metrics.jsonl as of now."""
        cfg = self.cfg
        if cfg.resume:
            self.load_state_dict(load_checkpoint(self.dir))
            check_can_continue(cfg, self.step, self.history, self.dir, self.log)
            self.log(f"resuming {self.dir} at step {self.step:,} of {cfg.steps:,}")
        save_json(self.dir / rundir.CONFIG, dataclasses.asdict(cfg))
        (self.dir / rundir.SUMMARY).unlink(missing_ok=True)  # an extended run is unfinished again
        _rewrite_jsonl(self.dir / rundir.METRICS, self.history)

    def _train(self) -> dict | None:
        """The loop, with the experiment loggers open around it (closed however it ends)."""
        loggers = open_loggers(self.cfg.log, self.dir, self.cfg, self.step)
        summary = None
        try:
            summary = self._loop(loggers)
        finally:
            for logger in loggers:
                if summary is not None:
                    logger.finish(summary)
                else:
                    logger.close()
        return summary

    def _loop(self, loggers: list) -> dict | None:
        cfg = self.cfg
        reporter = Reporter(cfg.steps, self.step, cfg.quiet, title=f"{cfg.dataset}", printer=self.log)
        start_step = self.step
        marks = _Milestones(cfg, self.history, self.step)

        def record(now: float):
            """Read and judge the evaluation; return its output, which the loop writes once the next steps
            are queued (loop.drive)."""
            row = self.evaluate(self.elapsed_s + now)
            if not all(math.isfinite(row[k]) for k in ("train_loss", "test_loss", "weight_norm")):
                raise RunError(self._non_finite_message())
            self.history.append(row)
            lines = marks.update(row)  # (decides an early stop)

            def output() -> None:
                metrics_file.write(json.dumps(row) + "\n")
                metrics_file.flush()
                for logger in loggers:
                    logger.log_eval(row)
                reporter.eval(row)
                for line in lines:
                    reporter.print(line)
            return output

        def check_finite() -> None:
            if not self._state_is_finite():
                raise RunError(self._non_finite_message())

        try:
            with open(self.dir / rundir.METRICS, "a") as metrics_file:
                interrupted, wall = loop.drive(self, reporter, record=record, save=self._save_at,
                                               check_finite=check_finite, live=lambda: not marks.stop)
        finally:
            reporter.close()
        self.elapsed_s += wall
        if interrupted:
            self.log(f"interrupted at step {self.step:,}; checkpoint saved in {self.dir}; "
                     f"continue with: grokfast-train --out {self.dir} --resume")
            return None
        summary = summarize(self.history, cfg.mem_threshold, cfg.gen_threshold,
                            steps_per_s=steps_per_s(self.step, start_step, wall, self.elapsed_s))
        summary["elapsed_s"] = round(self.elapsed_s, 3)
        summary["data"] = self.task.source
        summary["train_size"] = int(self.task.train_x.shape[0])
        summary["stopped_early_at"] = self.step if marks.stop else None
        save_json(self.dir / rundir.SUMMARY, summary)
        if self.history and reporter.live:  # the bar is gone: leave the final numbers on screen
            self.log(format_eval(self.history[-1], cfg.steps))
        self.log(_summary_line(summary, self.dir))
        return summary

    def _state_is_finite(self) -> bool:
        """Between eval points (a Ctrl-C): is the interval's loss, and every weight, still finite?"""
        return bool(torch.isfinite(self.meter.sums).all()) and math.isfinite(weight_norm(self.model.parameters()))

    def _non_finite_message(self) -> str:
        return non_finite_message(self.history, self.step, self.saved_step, self.dir)

    def _save_at(self, now: float) -> None:
        # The checkpoint records the wall time up to now, so a resumed run's elapsed_s keeps counting.
        saved, self.elapsed_s = self.elapsed_s, self.elapsed_s + now
        try:
            self.save()
        finally:
            self.elapsed_s = saved


class _Milestones:
    """One line when the run first memorises and when it first generalises; and whether it has been
    generalised long enough to stop (--stop-after-generalising)."""

    def __init__(self, cfg: Config, history: list[dict], step: int):
        self.cfg = cfg
        self.mem_seen = any(r["train_acc"] >= cfg.mem_threshold for r in history)
        self.gen_step = first_step(history, "test_acc", cfg.gen_threshold)
        # A run stops at an evaluation: resumed from one at (or past) its stop, it is done; resumed between
        # evaluations (a Ctrl-C), it trains to the next one and stops there.
        self.stop = bool(history) and history[-1]["step"] == step and self._stops_at(step)

    def _stops_at(self, step: int) -> bool:
        return step < self.cfg.steps and generalised_for(self.cfg.stop_after_generalising, step, self.gen_step)

    def update(self, row: dict) -> list[str]:
        lines = []
        if not self.mem_seen and row["train_acc"] >= self.cfg.mem_threshold:
            self.mem_seen = True
            lines.append(f"memorised: train accuracy {row['train_acc']:.3f} at step {row['step']:,}")
        if self.gen_step is None and row["test_acc"] >= self.cfg.gen_threshold:
            self.gen_step = row["step"]
            lines.append(f"generalised: test accuracy {row['test_acc']:.3f} at step {row['step']:,}")
        if not self.stop and self._stops_at(row["step"]):
            self.stop = True
            lines.append(f"stopping: generalised {row['step'] - self.gen_step:,} steps ago "
                         f"(--stop-after-generalising {self.cfg.stop_after_generalising:,})")
        return lines


def check_can_continue(cfg: Config, step: int, history: list[dict], run_dir: Path, log) -> None:
    """A resumed run must have steps left: refuse one at --steps. One already at its early stop (a
    Ctrl-C there, or the flag added since) trains nothing and is finished: say so."""
    if step >= cfg.steps:
        raise UsageError(f"the run in {run_dir} is already at step {step}; pass --steps larger than {step} to extend it")
    marks = _Milestones(cfg, history, step)
    if marks.stop:
        log(f"{run_dir} has been generalised for {step - marks.gen_step:,} steps at step {step:,}: it stops "
            f"here (--stop-after-generalising {cfg.stop_after_generalising:,}; 'off' trains on)")


def steps_per_s(step: int, start_step: int, wall: float, elapsed_s: float) -> float:
    """This session's training rate; the whole run's if this session trained nothing (it was at its stop)."""
    if step > start_step:
        return (step - start_step) / max(wall, 1e-9)
    return step / max(elapsed_s, 1e-9)


def non_finite_message(history: list[dict], step: int, saved_step: int | None, run_dir: Path) -> str:
    """The one line a run that went non-finite ends with: between which steps, and what is kept."""
    last = history[-1]["step"] if history else 0
    kept = (f"the last good checkpoint (step {saved_step:,}) in {run_dir} is kept"
            if saved_step is not None else "no checkpoint had been written yet")
    return (f"loss became non-finite between steps {last:,} and {step:,}; stopped, {kept}; "
            f"try a smaller --lr or --init-scale")


def _rewrite_jsonl(path: Path, rows: list[dict]) -> None:
    """metrics.jsonl as of the checkpoint: rows logged after it (a crash) are dropped on resume."""
    atomic_write(path, lambda f: f.write("".join(json.dumps(r) + "\n" for r in rows).encode()))


def _summary_line(s: dict, run_dir: Path) -> str:
    return (f"done: {landmarks_text(s)}; best test acc {s['best_test_acc']:.4f}; {s['steps_per_s']:.3g} steps/s; "
            f"results in {run_dir}")


def run(cfg: Config, log=print) -> dict | None:
    """Train one run described by a resolved config; returns its summary (None if interrupted)."""
    return Run(cfg, log).fit()
