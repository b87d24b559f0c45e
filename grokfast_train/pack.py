"""Packed runs: R same-shape runs trained as one stacked model, each indistinguishable from its solo run.

``PackedRun(cfgs).fit()`` trains the runs ``cfgs`` describe (one resolved ``Config`` each, each with
its own ``out``) together: one model whose every parameter is (R, ...) (``models/runs.py``), one
``PackSampler`` gather per step, one ``PackedAdamW`` step, metrics summed per run on the device.
On CUDA the step runs that stacked model, every op serving all R runs in one launch. On the CPU, which
has no launches to save, it runs each run's forward and backward in turn through a solo model bound to
the pack's weights (``bind_run``), each run's activations cache-sized, each run's gradients handed
straight to its update (``PackedAdamW.step_runs``). What may differ between the runs: the seed, the training subset (``--frac`` / ``--train-size``),
``--init-scale`` / ``--init-std``, lr, weight decay, betas, eps and the Grokfast filter. Everything
that fixes the step's shapes and schedule must match (``pack_key``).

Each run stays an ordinary run directory, written by the same rules as a solo run: config.json,
metrics.jsonl, summary.json, train.log, and checkpoint.pt in the solo format (its own weights,
optimiser state, sampler and meter) -- so ``report`` cannot tell packed from solo, and a packed run
resumes solo, or in another pack, and vice versa. A run that goes non-finite is frozen (its slice
zeroed, its lr 0) and reported as failed, with its last good checkpoint kept, while the others go on.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Callable

import torch

import kernels
from kernels.packed_adamw import PackedAdamW

from . import graph, heap, loop, precision, rundir
from .checkpoint import load_checkpoint, save_checkpoint, save_json
from .config import FULL_BATCH, Config
from .data import TaskData, load_task
from .errors import RunError, UsageError
from .loggers import open_loggers
from .metrics import landmarks_text, summarize
from .models import build_model, ops, resolve_backend
from .models.deferred import deferred
from .models.runs import bind_run, run_state, stack_states
from .optim import build_optimizer
from .progress import Reporter, format_eval
from .sampler import PackSampler
from .train import (_Milestones, _rewrite_jsonl, check_backend, check_can_continue, non_finite_message,
                    resolve_device, steps_per_s)

# Settings that may differ between the runs of one pack; every other setting -- the model, the data and
# its test set, the batch rule, the schedule (steps, evaluations, checkpoints), device, backend, dtype,
# CUDA graphs -- is shared, because the pack has one of each.
PER_RUN = {"frac", "train_size", "seed", "init_scale", "init_std", "lr", "weight_decay", "betas", "eps",
           "grokfast_alpha", "grokfast_lamb", "mem_threshold", "gen_threshold", "stop_after_generalising",
           "out", "resume", "force", "quiet", "log"}


def pack_key(cfg: Config) -> tuple:
    """Runs with equal keys can share a pack: same model, data, batch rule, schedule, device and dtype."""
    values = dataclasses.asdict(cfg)
    return tuple((k, json.dumps(v)) for k, v in sorted(values.items()) if k not in PER_RUN)


class _Member:
    """One run of a pack: its directory, lock, log, history and fate."""

    def __init__(self, cfg: Config, log: Callable[[str], None]):
        self.cfg, self.log = cfg, log
        self.dir = Path(cfg.out)
        self.lock: rundir.RunLock | None = None
        self.history: list[dict] = []
        self.elapsed_s = 0.0
        self.saved_step: int | None = None
        self.error: str | None = None  # set when the run went non-finite (it is frozen)
        self.loggers: list = []
        self.marks: _Milestones | None = None
        self.metrics_file = None
        self.summary: dict | None = None


class PackedRun:
    def __init__(self, cfgs: list[Config], log: Callable[[str], None] = print,
                 run_logs: list[Callable[[str], None]] | None = None, tasks: list[TaskData] | None = None,
                 stacked: bool | None = None):
        """``log``: the pack's own lines (progress); ``run_logs[r]``: run r's lines (its train.log in a sweep);
        ``tasks``: each run's data already in hand (a benchmark), instead of loading it; ``stacked``: compute
        the step with the stacked model (True) or run by run (False); default: stacked on CUDA only."""
        if not cfgs:
            raise ValueError("a pack needs at least one run")
        self.log = log
        self.device = resolve_device(cfgs[0].device)
        resolved = []
        for c in cfgs:
            c = dataclasses.replace(c, device=self.device.type)
            c = dataclasses.replace(c, backend=check_backend(resolve_backend(c), self.device))
            resolved.append(dataclasses.replace(c, cuda_graph=graph.resolve_mode(c.cuda_graph, self.device, c.backend)))
        keys = {pack_key(c) for c in resolved}
        if len(keys) > 1:
            a, b = (dict(k) for k in list(keys)[:2])
            k = next(k for k in a if a[k] != b.get(k))
            raise UsageError(f"runs of one pack must share {k} (got {a[k]} and {b[k]})")
        if len({c.out for c in resolved}) != len(resolved):
            raise UsageError("runs of one pack need distinct --out directories")
        self.cfg = resolved[0]  # the shared settings (GraphSteps reads eval_every from here)
        logs = run_logs or [log] * len(resolved)
        self.members = [_Member(c, lg) for c, lg in zip(resolved, logs)]
        try:
            for m in self.members:
                m.lock = rundir.prepare(m.dir, m.cfg.resume, m.cfg.force)
            self._build(tasks, stacked)
        except BaseException:
            self._release()
            raise

    # -- set-up ------------------------------------------------------------------------------
    def _build(self, given: list[TaskData] | None, stacked: bool | None) -> None:
        cfg, dev, R = self.cfg, self.device, len(self.members)
        tasks = []
        for r, m in enumerate(self.members):
            m.log(m.cfg.describe())
            t = given[r] if given is not None else load_task(m.cfg, log=m.log)
            m.log(f"train {t.train_x.shape[0]:,} of a pool of {t.pool_size:,}; test {t.test_x.shape[0]:,}; "
                  f"sequence length {t.seq_len}; packed with {R - 1} other run{'s' * (R != 2)}")
            tasks.append(t)
        first = tasks[0]
        for t in tasks[1:]:
            if not (torch.equal(t.test_x, first.test_x) and torch.equal(t.test_y, first.test_y)):
                raise UsageError("runs of one pack must share the test set")
        # Each run's initial weights exactly as its solo run draws them (on the CPU, with its own seed).
        solos = []
        for m, t in zip(self.members, tasks):
            torch.manual_seed(m.cfg.seed)
            solo = build_model(m.cfg, t)
            kernels.scaled_init_(solo, std=m.cfg.init_std, alpha=m.cfg.init_scale, seed=m.cfg.seed)
            solos.append(solo)
        # the solo optimiser's param_groups: a checkpoint written for run r is the one its solo run writes
        self._groups = [build_optimizer(m.cfg, s, m.cfg.backend)[0].state_dict()["param_groups"]
                        for m, s in zip(self.members, solos)]
        model = build_model(cfg, first, runs=R)
        model.load_state_dict(stack_states(solos))
        self.model = model.to(dev).train()
        # each backend's solo optimiser: the triton backend's the kernel, the torch backend's torch's AdamW
        # (PackedAdamW's rows path: the solo run's arithmetic)
        self.opt = PackedAdamW([p for p in self.model.parameters()],
                               [dict(lr=m.cfg.lr, betas=m.cfg.betas, eps=m.cfg.eps, weight_decay=m.cfg.weight_decay,
                                     grokfast_alpha=m.cfg.grokfast_alpha, grokfast_lamb=m.cfg.grokfast_lamb)
                                for m in self.members], kernel=None if cfg.backend == "triton" else False)
        self.grad_views = self.opt.grad_views()
        # How a step computes. Stacked: every op serves all R runs (one launch: what a GPU needs). Run by
        # run: the solo models above, bound to the pack's weights (``bind_run``), each run's forward and
        # backward in turn, each followed by its update (``step_runs``). A CPU has no launches to save, and one
        # run's activations stay in its caches where R runs' do not: there run by run measured 0.98-1.06x
        # the runs one after another, stacked 0.93-1.02x (BENCHMARKS.md).
        self.stacked = dev.type == "cuda" if stacked is None else stacked
        self.run_models = None if self.stacked else [bind_run(s, self.model, r) for r, s in enumerate(solos)]
        del solos
        # The training sets one after another; run r's subset row i is row base[r] + i.
        sizes = [t.train_x.shape[0] for t in tasks]
        self.base = torch.tensor([sum(sizes[:r]) for r in range(R)], device=dev)
        self.train_x = torch.cat([t.train_x for t in tasks]).to(dev)
        self.train_y = torch.cat([t.train_y for t in tasks]).to(dev)
        self.train_mask = None if first.train_mask is None else torch.cat([t.train_mask for t in tasks]).to(dev)
        self.task: TaskData = dataclasses.replace(first, train_x=first.train_x[:0], train_y=first.train_y[:0],
                                                  train_mask=None).to(dev)  # the shared test set
        self.sources = [t.source for t in tasks]
        self.sampler = PackSampler(sizes, None if cfg.batch_size == FULL_BATCH else cfg.batch_size,
                                   [m.cfg.seed for m in self.members], dev, cfg.order)
        self.weights = (self.sampler.valid / self.sampler.batch[:, None]).float()  # per-lane loss weights
        self.sums = torch.zeros(R, 3, dtype=torch.float64, device=dev)  # per run: loss sum, correct, examples
        self.counter = torch.zeros(R, dtype=torch.int32, device=dev)  # the fused loss's scratch, left zero
        # the backward's seed, one per run's loss, made once (no sum of the losses, no fill for a seed)
        self.seed = kernels.unit_seed((R,), dev)
        self.active = list(range(R))
        self.step = 0
        self.runs_shape = (R,)
        # The same chunked evaluation either way: replayed from CUDA graphs, or launched op by op.
        if cfg.cuda_graph == "on":
            self.stepper = graph.GraphSteps(self)
            self.test_sums = graph.GraphEval(self, pool=self.stepper.pool)
        else:
            self.stepper = graph.EagerSteps(self)
            self.test_sums = graph.GraphEval(self).eager
        if dev.type == "cpu":
            heap.keep_freed_memory()  # every step's tensors reused, not faulted in afresh (heap.py)

    def autocast(self):
        return precision.autocast(self.device, self.cfg.dtype)

    # -- the step ----------------------------------------------------------------------------
    def train_step(self) -> None:
        # (R, width) rows of the concatenated training sets, one launch on CUDA
        x, y, mask = self.sampler.draw(self.train_x, self.train_y, self.train_mask, self.base)
        if self.stacked:
            self._stacked_grads(x, y, mask)
            self.opt.step()
        else:  # each live run's gradients made in turn, each taken by its update at once
            self.opt.step_runs(lambda r: self._run_grads(r, x, y, mask), self.active)

    def _stacked_grads(self, x, y, mask) -> None:
        """Every run's gradient from one stacked forward and backward; each run's loss sum, correct count and
        batch size added to its row of ``sums`` by the loss."""
        self.opt.zero_grad()
        # weight gradients in one launch, every gradient written into the optimiser's buffer (models/deferred.py)
        with deferred(on=self.cfg.backend == "triton", into=self.grad_views):
            with self.autocast():
                logits = self.model(x, mask)  # (R, width, classes)
            # each run's mean over its own batch: its valid lanes, weighted 1 / its batch size
            losses = ops.cross_entropy(logits, y, self.weights, self.sums, self.cfg.backend, counter=self.counter)
            losses.backward(self.seed)  # runs share no weight: each gets the gradient of its own loss

    def _run_grads(self, r: int, x, y, mask) -> list[torch.Tensor]:
        """Run r's gradients from its solo step's forward, loss and backward on its own batch (its valid lanes,
        a prefix), one per parameter; its loss sum, correct count and batch size added to its row of ``sums``."""
        b = self.sampler.runs[r].batch_size
        model = self.run_models[r]
        with self.autocast():
            logits = model(x[r, :b], None if mask is None else mask[r, :b])
        loss = ops.cross_entropy(logits, y[r, :b], sums=self.sums[r], backend=self.cfg.backend,
                                 counter=self.counter[r:r + 1])
        loss.backward()  # into fresh tensors (bind_run left .grad None) ...
        grads = [p.grad for p in model.parameters()]
        model.zero_grad(set_to_none=True)  # ... which the optimiser then holds alone: none outlives its run
        return grads

    def advance(self, limit: int) -> int:
        self.sampler.prepare(self.step)
        n = self.stepper(limit)
        self.step += n
        return n

    # -- evaluation ----------------------------------------------------------------------------
    def eval_chunk(self, rows: torch.Tensor | None, weight: torch.Tensor, sums: torch.Tensor,
                   accumulate: bool = True, counter: torch.Tensor | None = None) -> None:
        """Adds (``accumulate=False``: sets) each run's [loss sum, correct, rows] over the shared test rows
        ``rows`` (None: all) of nonzero ``weight`` to its row of ``sums`` (R, 3)."""
        R = len(self.members)
        x, y, mask = graph.test_rows(self.task, rows)
        with deferred(on=self.cfg.backend == "triton"), self.autocast():
            if self.stacked:
                logits = self.model(x.expand(R, -1, -1), None if mask is None else mask.expand(R, -1, -1))
            else:
                logits = torch.stack([model(x, mask) for model in self.run_models])
        ops.cross_entropy(logits, y, weight, sums, self.cfg.backend, accumulate, counter)

    def weight_norms(self, out: torch.Tensor) -> None:
        self.opt.weight_norms(out=out)

    def evaluate(self, elapsed_s: float) -> list[dict]:
        test, norms = self.test_sums()
        train = self.sums.clone()
        self.sums.zero_()
        n = self.task.test_x.shape[0]
        rows = []
        for (loss_sum, correct, count), (test_loss_sum, test_correct, _), norm in zip(train.tolist(), test.tolist(),
                                                                                        norms.tolist()):
            count = max(count, 1.0)
            rows.append({"step": self.step, "train_acc": correct / count, "train_loss": loss_sum / count,
                         "test_acc": test_correct / n, "test_loss": test_loss_sum / n, "weight_norm": norm,
                         "elapsed_s": round(elapsed_s, 3)})
        return rows

    # -- each run's checkpoint, in its solo run's format ----------------------------------------
    def run_checkpoint(self, r: int, elapsed_s: float) -> dict:
        m, cfg = self.members[r], self.members[r].cfg
        opt_state = self.opt.run_state(r)
        t = self.opt.step_count
        filtered = cfg.grokfast_alpha is not None
        state: dict[int, dict] = {}
        if t > 0:
            for i, (ea, eas) in enumerate(zip(opt_state["exp_avg"], opt_state["exp_avg_sq"])):
                state[i] = {"step": torch.tensor(float(t)), "exp_avg": ea, "exp_avg_sq": eas}
                if cfg.backend == "triton" and filtered:  # FusedAdamW keeps h only with its filter on
                    state[i]["grokfast_h"] = opt_state["grokfast_h"][i]
        grad_filter = None
        if cfg.backend == "torch" and filtered:
            grad_filter = {"alpha": cfg.grokfast_alpha, "lamb": cfg.grokfast_lamb,
                           "h": opt_state["grokfast_h"] if t > 0 else None}
        return {
            "step": self.step,
            "model": run_state(self.model, r),
            "optimizer": {"state": state, "param_groups": self._groups[r]},
            "grad_filter": grad_filter,
            "sampler": self.sampler.runs[r].state_dict(),
            "meter": {"sums": self.sums[r].cpu()},
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
            "history": m.history,
            "elapsed_s": elapsed_s,
            "config": dataclasses.asdict(cfg),
        }

    @torch.no_grad()
    def load_run_checkpoint(self, r: int, state: dict) -> None:
        m = self.members[r]
        try:
            params = dict(self.model.named_parameters())
            if set(state["model"]) != set(params):
                raise ValueError("parameter names differ")
            for k, v in state["model"].items():
                params[k][r].copy_(v)
            saved = state["optimizer"]["state"]
            n = len(params)
            if saved:
                h = None
                if m.cfg.grokfast_alpha is not None:
                    h = (state["grad_filter"]["h"] if m.cfg.backend == "torch"
                         else [saved[i]["grokfast_h"] for i in range(n)])
                self.opt.load_run_state(r, {"exp_avg": [saved[i]["exp_avg"] for i in range(n)],
                                            "exp_avg_sq": [saved[i]["exp_avg_sq"] for i in range(n)],
                                            "grokfast_h": h})
            t = int(float(saved[0]["step"])) if saved else 0
            if t != state["step"]:
                raise ValueError(f"optimiser at step {t}, run at step {state['step']}")
            self.sampler.runs[r].load_state_dict(state["sampler"])
            sums = state["meter"]["sums"]
            if "count" in state["meter"]:
                sums = torch.cat([sums, sums.new_tensor([float(state["meter"]["count"])])])
            self.sums[r].copy_(sums)
        except (KeyError, IndexError, RuntimeError, TypeError, ValueError) as e:
            detail = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise RunError(f"checkpoint in {m.dir} does not match this run's model or optimiser ({detail}); "
                           f"resume it with the settings and version of grokfast-train that wrote it") from None
        m.history, m.elapsed_s, m.saved_step = state["history"], state["elapsed_s"], state["step"]

    # -- the loop ------------------------------------------------------------------------------
    def fit(self) -> list[dict | None]:
        """Train every run to cfg.steps. Returns one entry per run: its summary, None if interrupted
        (checkpoint saved), or {"error": message} if it went non-finite."""
        try:
            self._start()
            return self._loop()
        finally:
            for m in self.members:
                for logger in m.loggers:
                    logger.close() if m.summary is None else logger.finish(m.summary)
                if m.metrics_file is not None:
                    m.metrics_file.close()
            self._release()

    def _release(self) -> None:
        for m in self.members:
            if m.lock is not None:
                m.lock.release()

    def _start(self) -> None:
        steps = set()
        for r, m in enumerate(self.members):
            if m.cfg.resume:
                self.load_run_checkpoint(r, load_checkpoint(m.dir))
                check_can_continue(m.cfg, m.saved_step, m.history, m.dir, m.log)
                m.log(f"resuming {m.dir} at step {m.saved_step:,} of {m.cfg.steps:,}")
            steps.add(m.saved_step or 0)
        if len(steps) > 1:
            raise UsageError(f"runs of one pack must start at the same step, not at {sorted(steps)}")
        self.step = steps.pop()
        self.opt.set_step_count(self.step)
        for m in self.members:
            save_json(m.dir / rundir.CONFIG, dataclasses.asdict(m.cfg))
            (m.dir / rundir.SUMMARY).unlink(missing_ok=True)
            _rewrite_jsonl(m.dir / rundir.METRICS, m.history)
            m.marks = _Milestones(m.cfg, m.history, self.step)
            m.loggers = open_loggers(m.cfg.log, m.dir, m.cfg, self.step)
            m.metrics_file = open(m.dir / rundir.METRICS, "a")

    def _loop(self) -> list[dict | None]:
        cfg, R = self.cfg, len(self.members)
        reporter = Reporter(cfg.steps, self.step, cfg.quiet, title=f"pack of {R}", printer=self.log)
        start_step = self._start_step = self.step
        for r in [r for r in self.active if self.members[r].marks.stop]:
            self._stop_early(r, 0.0)  # resumed at its stop (train.check_can_continue): finished, nothing to train
        try:
            interrupted, wall = loop.drive(
                self, reporter, record=lambda now: self._record(self.evaluate(now), now, reporter), save=self._save,
                check_finite=self._freeze_non_finite_between_evals, live=lambda: bool(self.active))
        finally:
            reporter.close()
        results: list[dict | None] = []
        for m in self.members:
            if m.error is not None:
                results.append({"error": m.error})
            elif m.summary is not None:  # stopped early (--stop-after-generalising)
                results.append(m.summary)
            elif interrupted:
                m.log(f"interrupted at step {self.step:,}; checkpoint saved in {m.dir}")
                results.append(None)
            else:
                results.append(self._finish(m, wall, start_step))
        return results

    def _record(self, rows: list[dict], now: float, reporter: Reporter):
        """Judge each run's evaluation (non-finite: frozen; stopped early: written, checkpointed and finished
        now); return the others' output, which the loop writes once the next steps are queued (loop.drive)."""
        later = []
        for r in list(self.active):
            m, row = self.members[r], rows[r]
            row["elapsed_s"] = round(m.elapsed_s + now, 3)
            if not all(math.isfinite(row[k]) for k in ("train_loss", "test_loss", "weight_norm")):
                self._fail(r, row["step"])
                continue
            m.history.append(row)
            lines = m.marks.update(row)
            if m.marks.stop:
                _write(m, row, lines)
                self._stop_early(r, now)
            else:
                later.append((m, row, lines))
        step, note = self.step, None
        if self.active:
            train = [rows[r]["train_acc"] for r in self.active]
            test = [rows[r]["test_acc"] for r in self.active]
            note = (f"{len(self.active)} runs: train acc {min(train):.3f}-{max(train):.3f}, "
                    f"test acc {min(test):.3f}-{max(test):.3f}")

        def output() -> None:
            for entry in later:
                _write(*entry)
            if note is not None:
                reporter.note(step, note)
        return output

    def _fail(self, r: int, step: int) -> None:
        """Run r went non-finite: freeze it, keep its last good checkpoint, go on with the others."""
        m = self.members[r]
        m.error = non_finite_message(m.history, step, m.saved_step, m.dir)
        m.log(m.error)
        self.opt.freeze(r)
        self.active.remove(r)
        self.log(f"{m.dir.name}: {m.error}; the other runs of the pack go on")

    def _stop_early(self, r: int, now: float) -> None:
        """Run r has been generalised for --stop-after-generalising steps: checkpoint it, write its summary
        and freeze it, as its solo run would end there; the other runs go on."""
        m = self.members[r]
        save_checkpoint(m.dir, self.run_checkpoint(r, m.elapsed_s + now))
        m.saved_step = self.step
        self._finish(m, now, self._start_step)
        self.opt.freeze(r)
        self.active.remove(r)

    def _freeze_non_finite_between_evals(self) -> None:
        """A Ctrl-C between eval points: never checkpoint a run whose state went non-finite."""
        finite = torch.isfinite(self.sums).all(1) & torch.isfinite(self.opt.weight_norms())
        for r, ok in enumerate(finite.tolist()):
            if not ok and r in self.active:
                self._fail(r, self.step)

    def _save(self, now: float) -> None:
        for r in self.active:
            m = self.members[r]
            save_checkpoint(m.dir, self.run_checkpoint(r, m.elapsed_s + now))
            m.saved_step = self.step

    def _finish(self, m: _Member, wall: float, start_step: int) -> dict:
        m.elapsed_s += wall
        r = self.members.index(m)
        summary = summarize(m.history, m.cfg.mem_threshold, m.cfg.gen_threshold,
                            steps_per_s=steps_per_s(self.step, start_step, wall, m.elapsed_s))
        summary["elapsed_s"] = round(m.elapsed_s, 3)
        summary["data"] = self.sources[r]
        summary["train_size"] = int(self.sampler.runs[r].n)
        summary["stopped_early_at"] = self.step if m.marks.stop else None
        save_json(m.dir / rundir.SUMMARY, summary)
        m.summary = summary
        m.log(f"done: {landmarks_text(summary)}; best test acc {summary['best_test_acc']:.4f}; "
              f"{summary['steps_per_s']:.3g} steps/s (packed with {len(self.members) - 1} others); results in {m.dir}")
        return summary


def _write(m: _Member, row: dict, lines: list[str]) -> None:
    """One run's evaluation out: its metrics file, its loggers, its log."""
    m.metrics_file.write(json.dumps(row) + "\n")
    m.metrics_file.flush()
    for logger in m.loggers:
        logger.log_eval(row)
    m.log(format_eval(row, m.cfg.steps))
    for line in lines:
        m.log(line)


def train_pack(cfgs: list[Config], log: Callable[[str], None] = print) -> list[dict | None]:
    """Train the runs ``cfgs`` as one pack; see ``PackedRun.fit``."""
    return PackedRun(cfgs, log).fit()


def describe_pack(cfgs: list[Config]) -> str:
    names = ", ".join(Path(c.out).name for c in cfgs[:4]) + (" ..." if len(cfgs) > 4 else "")
    return f"pack of {len(cfgs)}: {names}"
