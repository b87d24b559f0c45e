"""``grokfast-train sweep``: a grid of ordinary runs (data size x hidden size x layers x seed).

A sweep directory holds one ordinary run directory per grid point, named for the point
(``n1500-h128-l1-s0``, or ``f0.3-...`` for a fraction), and ``sweep.json``: the settings every
run shares, the grid, and each run's last known status. The run directories are the truth; the
status in ``sweep.json`` is a summary for people and for ``report``.

Re-running the same command skips finished runs and resumes interrupted ones from their
checkpoints; a larger grid adds runs and never touches finished ones; a different shared setting
in the same directory is refused. A run is trained by one process at a time (``rundir.RunLock``),
so a sweep launched twice, or a Ray task retried while its first attempt still runs, never trains
a run twice at once: the second finds the lock held and leaves the run to the first.

Packing (``--pack auto|off|N``): the runs that share a model shape, batch rule and step count (and
stand at the same step) are trained together as one stacked model, up to N runs per pack
(``pack.py``); each still writes its own ordinary run directory. ``auto`` packs on CUDA (sized to the
device's memory) and not on the CPU, where a pack saves no launches (it computes its runs in turn,
at about their unpacked speed) and would only take runs away from ``--jobs``' workers.

Executors: ``local`` runs ``--jobs`` worker processes with the machine's cores split between them
(``auto``: one run per core on the CPU, within memory; one run at a time on CUDA, in-process);
``ray`` makes each run a Ray task (a local instance, or ``--ray-address``), ``--gpus-per-run`` lets
several small runs share a GPU, and a task whose worker dies is retried and resumes from the run's
last checkpoint. A Ctrl-C (or a SIGINT sent to the sweep alone) reaches the runs in progress, which
checkpoint and stop; nothing new starts.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import signal
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterator

from . import resources, rundir
from .checkpoint import CHECKPOINT, save_json
from .config import Config, legacy_value, resolve
from .errors import GrokfastError, RunLocked, UsageError, word_or_int
from .interrupt import StopFlag, hold_interrupts, stop_on_sigterm
from .metrics import generalised_for, landmarks_text

SWEEP_FILE = "sweep.json"
# The grid's axes: Config field -> the sweep flag that lists its values.
AXES = {"frac": "--fracs", "train_size": "--train-sizes", "hidden": "--hidden-sizes", "n_layers": "--layers",
        "seed": "--seeds"}
# Settings that are not part of what the runs share: how a run is executed and shown, and where it lives.
_NOT_SHARED = rundir.RESUMABLE | {"backend"}
_SWEEP_ONLY = ("fracs", "train_sizes", "hidden_sizes", "layers", "seeds", "executor", "jobs", "ray_address",
               "gpus_per_run", "threads_per_run", "pack", "dry_run")
MAX_AUTO_PACK = 64  # --pack auto never packs more runs than this
# The paper's sample-wise grids (docs/DESIGN.md): modular training sizes 1,000..9,500 by 500; text fractions 0.1..1.0.
DEFAULT_TRAIN_SIZES = {"modular": list(range(1000, 9501, 500))}
DEFAULT_FRACS = [round(0.1 * i, 1) for i in range(1, 11)]


# ------------------------------------------------------------------------------------------ grid


@dataclasses.dataclass(frozen=True)
class Point:
    size_key: str  # "frac" | "train_size"
    size: float | int
    hidden: int
    n_layers: int
    seed: int

    @property
    def name(self) -> str:
        size = f"n{self.size}" if self.size_key == "train_size" else f"f{self.size:g}"
        return f"{size}-h{self.hidden}-l{self.n_layers}-s{self.seed}"

    def settings(self) -> dict[str, Any]:
        other = "frac" if self.size_key == "train_size" else "train_size"
        return {self.size_key: self.size, other: None, "hidden": self.hidden, "n_layers": self.n_layers,
                "seed": self.seed}


def _parse_list(flag: str, text: str, kind: Callable) -> list:
    items = [t.strip() for t in text.split(",")]
    if not text.strip() or any(not t for t in items):
        raise UsageError(f"{flag} needs a comma-separated list of values, got {text!r}")
    try:
        values = [kind(t) for t in items]
    except ValueError:
        raise UsageError(f"{flag}: {text!r} is not a list of {'integers' if kind is int else 'numbers'}") from None
    duplicates = sorted({v for v in values if values.count(v) > 1})
    if duplicates:
        raise UsageError(f"{flag} lists {', '.join(map(str, duplicates))} more than once")
    return values


def grid_points(given: dict[str, Any], dataset: str) -> list[Point]:
    """The grid the flags describe; a single-run flag (--frac, --hidden, --seed, ...) is a one-value axis."""
    if "fracs" in given and "train_sizes" in given:
        raise UsageError("give --fracs or --train-sizes, not both")
    if "fracs" in given or "frac" in given:
        size_key = "frac"
        sizes = _parse_list("--fracs", given["fracs"], float) if "fracs" in given else [given["frac"]]
        for f in sizes:
            if not 0 < f <= 1:
                raise UsageError(f"--fracs: {f:g} is outside (0, 1]; use --train-sizes for counts")
    elif "train_sizes" in given or "train_size" in given:
        size_key = "train_size"
        sizes = (_parse_list("--train-sizes", given["train_sizes"], int) if "train_sizes" in given
                 else [given["train_size"]])
    elif dataset in DEFAULT_TRAIN_SIZES:
        size_key, sizes = "train_size", DEFAULT_TRAIN_SIZES[dataset]
    else:
        size_key, sizes = "frac", DEFAULT_FRACS
    preset = resolve(Config(dataset=dataset))

    def axis(list_key: str, flag: str, single_key: str) -> list[int]:
        """The listed values, else the single-run flag's, else the preset's (each point is validated
        as an ordinary run's config by point_config)."""
        if list_key in given:
            return _parse_list(flag, given[list_key], int)
        return [given.get(single_key, getattr(preset, single_key))]

    hidden = axis("hidden_sizes", "--hidden-sizes", "hidden")
    layers = axis("layers", "--layers", "n_layers")
    seeds = axis("seeds", "--seeds", "seed")
    # Seed-major: a sweep stopped part-way has whole size curves for its first seeds.
    return [Point(size_key, s, h, n, seed) for seed in seeds for h in hidden for n in layers for s in sizes]


def point_config(given: dict[str, Any], point: Point, sweep_dir: Path) -> Config:
    run_settings = {k: v for k, v in given.items() if k not in _SWEEP_ONLY and k not in AXES}
    run_settings.update(point.settings(), out=str(sweep_dir / point.name), quiet=True)
    try:
        return resolve(Config(**run_settings))
    except UsageError as e:
        raise UsageError(f"grid point {point.name}: {e}") from None


def shared_settings(cfg: Config, given: dict[str, Any]) -> dict[str, Any]:
    """What every run of the sweep has in common, resolved: the identity of the sweep."""
    values = dataclasses.asdict(cfg)
    skip = set(AXES) | _NOT_SHARED
    if "ffn" not in given:
        skip.add("ffn")  # derived from --hidden by the preset's rule, so it varies along that axis
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in sorted(values.items()) if k not in skip}


# ------------------------------------------------------------------------------------ one run


def run_status(run_dir: Path, steps: int, stop_after_generalising: int | None = None) -> str:
    """done (finished at >= steps, or generalised for ``stop_after_generalising`` steps) | resumable (has a
    checkpoint) | partial (files, no checkpoint) | new."""
    summary = run_dir / rundir.SUMMARY
    if summary.exists():
        try:
            s = json.loads(summary.read_text())
            final = s.get("final_step", 0)
            if final >= steps:
                return "done"
            if generalised_for(stop_after_generalising, final, s.get("generalization_step")):
                # Done at this budget too. A run recorded under a smaller one (the sweep's --steps since
                # raised) is resumed to stop at once, so that its files carry the budget of the sweep
                # it is now part of: the report groups runs by budget.
                budget = _budget(run_dir)
                if budget is None or budget >= steps or not (run_dir / CHECKPOINT).exists():
                    return "done"
        except (OSError, ValueError, TypeError):
            pass
    if (run_dir / CHECKPOINT).exists():
        return "resumable"
    if (run_dir / rundir.CONFIG).exists() or (run_dir / rundir.METRICS).exists():
        return "partial"
    return "new"


def _budget(run_dir: Path) -> int | None:
    """The --steps a run's config.json records (None: unreadable)."""
    try:
        return int(json.loads((run_dir / rundir.CONFIG).read_text())["steps"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _prepared(cfg: Config) -> tuple[Config, str]:
    """A grid point's config as it will train (resumed from its checkpoint, or started over when it
    stopped before its first), and its status (``run_status``)."""
    run_dir = Path(cfg.out)
    status = run_status(run_dir, cfg.steps, cfg.stop_after_generalising)
    if status == "resumable":
        # what a resume may change (rundir.RESUMABLE) comes from this invocation; the rest from the run
        given = {k: getattr(cfg, k) for k in rundir.RESUMABLE - {"resume", "force", "out"}}
        cfg = dataclasses.replace(rundir.merge_for_resume(rundir.saved_config(run_dir), given), out=str(run_dir))
    elif status == "partial":
        cfg = dataclasses.replace(cfg, force=True)  # stopped before its first checkpoint: start it over
    return cfg, status


def _log_file(run_dir: Path):
    """run_dir/train.log, appended to across sessions: the run's own lines when a sweep trains it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    return open(run_dir / "train.log", "a")


def _writer(f) -> Callable[[str], None]:
    def log(line: str) -> None:
        f.write(line + "\n")
        f.flush()

    return log


def _skipped(run_dir: Path) -> dict[str, Any]:
    return {"name": run_dir.name, "status": "skipped", "summary": json.loads((run_dir / rundir.SUMMARY).read_text())}


def train_point(cfg_dict: dict[str, Any], threads: int | None = None) -> dict[str, Any]:
    """Train one grid point to the end, resuming it if it has a checkpoint; never raises for a bad run.

    Used by every executor (in-process, worker process, Ray task), so the same point gives the same
    run whatever runs it. Returns {"name", "status": done | skipped | interrupted | locked | failed, ...}.
    """
    import torch

    from .train import Run

    if threads:
        torch.set_num_threads(threads)
    cfg = Config.from_dict(cfg_dict)
    run_dir = Path(cfg.out)
    result: dict[str, Any] = {"name": run_dir.name}
    started = time.perf_counter()
    try:
        cfg, status = _prepared(cfg)
        if status == "done":
            return _skipped(run_dir)
        with _log_file(run_dir) as log_file:
            summary = Run(cfg, log=_writer(log_file)).fit()
    except RunLocked as e:
        return {**result, "status": "locked", "error": str(e)}
    except GrokfastError as e:
        return {**result, "status": "failed", "error": str(e)}
    wall = time.perf_counter() - started
    if summary is None:
        return {**result, "status": "interrupted", "wall_s": wall}
    return {**result, "status": "done", "summary": summary, "wall_s": wall}


def train_unit(cfg_dicts: list[dict[str, Any]], threads: int | None = None) -> list[dict[str, Any]]:
    """Train one unit of work -- a single point, or a pack of points trained as one model -- and return
    each point's result as ``train_point`` does. A pack leaves out what is finished, what another
    process holds (``locked``) and what cannot join it, and trains the rest together."""
    if len(cfg_dicts) == 1:
        return [train_point(cfg_dicts[0], threads)]
    import torch

    from .pack import PackedRun

    if threads:
        torch.set_num_threads(threads)
    results, members = [], []
    for d in cfg_dicts:
        cfg = Config.from_dict(d)
        try:
            cfg, status = _prepared(cfg)
        except GrokfastError as e:
            results.append({"name": Path(cfg.out).name, "status": "failed", "error": str(e)})
            continue
        if status == "done":
            results.append(_skipped(Path(cfg.out)))
        else:
            members.append(cfg)
    while members:
        started = time.perf_counter()
        files = [_log_file(Path(c.out)) for c in members]
        try:
            outcomes = PackedRun(members, log=lambda line: None, run_logs=[_writer(f) for f in files]).fit()
        except RunLocked as e:
            # one member is being trained elsewhere: leave it to that process, pack the others
            held = next((c for c in members if str(Path(c.out)) in str(e)), members[0])
            results.append({"name": Path(held.out).name, "status": "locked", "error": str(e)})
            members = [c for c in members if c is not held]
            continue
        except GrokfastError as e:
            results += [{"name": Path(c.out).name, "status": "failed", "error": str(e)} for c in members]
            break
        finally:
            for f in files:
                f.close()
        wall = time.perf_counter() - started
        for c, out in zip(members, outcomes):
            name = Path(c.out).name
            if out is None:
                results.append({"name": name, "status": "interrupted", "wall_s": wall})
            elif "error" in out:
                results.append({"name": name, "status": "failed", "error": out["error"]})
            else:
                results.append({"name": name, "status": "done", "summary": out, "wall_s": wall, "packed": len(members)})
        break
    return results


def plan_units(configs: list[Config], pack: str | int, device: str) -> list[list[Config]]:
    """The sweep's work as units: one run each (``pack`` off), or packs of the runs that can train
    together (``pack.pack_key`` and the step they stand at), at most ``pack`` (or the auto width) each."""
    from .pack import pack_key

    if pack == "off" or (pack == "auto" and not _on_cuda(device)) or len(configs) < 2:
        return [[c] for c in configs]
    groups: dict[tuple, list[Config]] = {}
    units = []
    for c in configs:
        try:
            prepared, _ = _prepared(c)
        except GrokfastError:
            units.append([c])  # trained alone, where its run reports the problem
            continue
        groups.setdefault((pack_key(prepared), _start_step(c)), []).append(c)
    for members in groups.values():
        width = pack if isinstance(pack, int) else auto_pack_width(members[0], len(members))
        units += [members[i:i + width] for i in range(0, len(members), width)]
    return units


def _on_cuda(device: str) -> bool:
    import torch

    return device == "cuda" or (device == "auto" and torch.cuda.is_available())


def _start_step(cfg: Config) -> int:
    """The step a grid point resumes from: its checkpoint's, or 0."""
    import torch

    path = Path(cfg.out) / CHECKPOINT
    if run_status(Path(cfg.out), cfg.steps, cfg.stop_after_generalising) != "resumable":
        return 0
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["step"])
    except Exception:
        return -1  # unreadable: its own unit, where the run reports the problem


# What one worker may hold, for --jobs auto: a run's whole process peaked at 1.2 GB for IMDB (the full
# offline pool) and 0.4 GB for modular, measured on this project's CPU machine; 2 GiB leaves room.
RUN_MEMORY = 2 << 30


def auto_jobs(units: int, threads_per_run: int | None, on_cuda: bool) -> int:
    """--jobs auto: on the CPU, as many runs side by side as there are cores for them (a small model's
    ops do not scale across threads, separate runs do: BENCHMARKS.md), at most one per unit of work and
    per RUN_MEMORY of available memory; on CUDA one (runs share the GPU by packing instead)."""
    if on_cuda:
        return 1
    fit = resources.available_memory() // RUN_MEMORY
    return max(1, min(units, resources.cores() // (threads_per_run or 1), fit))


def auto_pack_width(cfg: Config, count: int) -> int:
    """Runs per pack on CUDA: what fits in half the free device memory, by a rough per-run estimate
    (weights, gradients, AdamW + filter state, and the step's activations), at most MAX_AUTO_PACK."""
    import torch

    free, _ = torch.cuda.mem_get_info()
    seq = 256 if cfg.max_len is None else cfg.max_len
    eval_rows = cfg.eval_batch_size  # an evaluation chunk's rows per run
    if cfg.dataset == "modular":
        from .data.modular import pool_size, test_size

        seq, vocab = 7, cfg.p + 4
        batch = pool_size(cfg.p, cfg.op) if cfg.batch_size == "full" else cfg.batch_size
        eval_rows = min(eval_rows, test_size(cfg.p, cfg.op))  # (a chunk is never larger than the test set)
    else:
        vocab, batch = cfg.vocab_size or 30522, cfg.batch_size
    params = (vocab + seq) * cfg.hidden + cfg.n_layers * (4 * cfg.hidden ** 2 + 2 * cfg.hidden * cfg.ffn)
    rows = max(batch, eval_rows)
    activations = rows * seq * (12 * cfg.hidden + 2 * cfg.ffn) * cfg.n_layers * 4
    per_run = 24 * params + activations
    return max(1, min(MAX_AUTO_PACK, count, int(free * 0.5 // per_run)))


# ---------------------------------------------------------------------------------- executors


def _run_local(units: list[list[dict]], threads: int, jobs: int, stop: StopFlag) -> Iterator[list[dict]]:
    if jobs == 1:
        for unit in units:
            if stop.set:
                return
            yield train_unit(unit, threads)
        return
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    # Never more tasks handed out than workers: after a Ctrl-C nothing new starts.
    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_worker_init, initargs=(os.getpid(),)) as pool, _sigint_forwarded_to_workers():
        pending, queue = set(), list(units)
        while queue or pending:
            while queue and len(pending) < jobs and not stop.set:
                pending.add(pool.submit(_train_unit_in_worker, queue.pop(0), threads, os.getpid()))
            if not pending:
                return
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                yield future.result()


def _worker_init(sweep_pid: int) -> None:
    """A worker process leaves the sweep's process group, so that every Ctrl-C reaches it once, through
    the sweep (``_sigint_forwarded_to_workers``), whether it came from a terminal (the whole group) or
    was sent to the sweep's pid alone; a training Run handles it, an idle worker holds it (nothing new
    is handed out after a Ctrl-C anyway). If the sweep dies, however it dies (a SIGKILL, an OOM kill),
    the worker takes a SIGTERM: a training run checkpoints and stops, and the worker exits, rather than
    training on for no one, holding its run directory's lock and its share of the machine."""
    os.setpgrp()
    hold_interrupts()
    stop_on_sigterm()
    _signal_when_parent_dies(sweep_pid)


def _train_unit_in_worker(cfg_dicts: list[dict[str, Any]], threads: int | None, sweep_pid: int) -> list[dict]:
    try:
        return train_unit(cfg_dicts, threads)
    finally:
        if os.getppid() != sweep_pid:  # the sweep died while this trained (or failed): no one waits for it
            os._exit(130)


def _signal_when_parent_dies(parent_pid: int) -> None:
    """SIGTERM by Linux's parent-death signal (prctl PR_SET_PDEATHSIG); elsewhere nothing (the worker then
    notices only when it next talks to the dead sweep, after its run). Seen under load: the signal can come
    twice, so its handler (``stop_on_sigterm``) never escalates."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        if ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM) != 0:  # 1 = PR_SET_PDEATHSIG
            return
    except (OSError, AttributeError):
        return
    if os.getppid() != parent_pid:  # it died before the prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


@contextlib.contextmanager
def _sigint_forwarded_to_workers() -> Iterator[None]:
    """Each SIGINT the sweep takes is passed on to its worker processes, then handled as before (the
    sweep's StopFlag: the first starts nothing new, a second stops now)."""
    import multiprocessing

    def forward(signum, frame):
        for child in multiprocessing.active_children():
            try:
                os.kill(child.pid, signal.SIGINT)
            except ProcessLookupError:
                pass
        if callable(previous):
            previous(signum, frame)

    try:
        previous = signal.signal(signal.SIGINT, forward)
    except ValueError:  # not the main thread: no handler can be set here, nor was the StopFlag's
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _run_ray(units: list[list[dict]], threads: int, gpus: float, address: str | None,
             stop: StopFlag) -> Iterator[list[dict]]:
    try:
        import ray
    except ImportError:
        raise UsageError("--executor ray needs Ray: pip install 'grokfast-train[ray]'") from None
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 **({} if address else {"num_cpus": os.cpu_count()}))
    # max_retries: a task whose worker dies is run again; train_point resumes it from its checkpoint.
    task = ray.remote(num_cpus=threads, num_gpus=gpus, max_retries=3)(train_unit)
    pending = [task.remote(unit, threads) for unit in units]
    try:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                yield ray.get(ref)
            if stop.set:
                for ref in pending:  # a running task's Run gets KeyboardInterrupt, which it checkpoints
                    ray.cancel(ref)
                for ref in pending:
                    try:
                        yield ray.get(ref)
                    except (ray.exceptions.TaskCancelledError, ray.exceptions.RayTaskError):
                        pass
                return
    finally:
        if not address:
            ray.shutdown()


# ------------------------------------------------------------------------------- the sweep


class SweepFile:
    """sweep.json: shared settings, the grid (the union of every invocation's), and run statuses."""

    def __init__(self, sweep_dir: Path, shared: dict[str, Any]):
        self.path = sweep_dir / SWEEP_FILE
        self.data: dict[str, Any] = {"shared": shared, "runs": {}}
        if self.path.exists():
            try:
                old = json.loads(self.path.read_text())
                old_shared, old_runs = old["shared"], old["runs"]
            except (OSError, ValueError, KeyError, TypeError):
                raise GrokfastError(f"{self.path} is unreadable; move it away to start a new sweep there") from None
            # a setting added to grokfast-train since the sweep started has, in its file, the value it had then
            old_shared = {**{k: legacy_value(k) for k in shared if k not in old_shared}, **old_shared}
            changed = sorted(k for k in set(old_shared) | set(shared) if old_shared.get(k) != shared.get(k))
            if changed:
                k = changed[0]
                raise UsageError(f"{sweep_dir} holds a sweep with {k}={old_shared.get(k)!r}, not {shared.get(k)!r}"
                                 f"{f' (and {len(changed) - 1} more settings)' if len(changed) > 1 else ''}; "
                                 f"use another --out for a different setting")
            self.data["runs"] = old_runs

    def add(self, point: Point, status: str) -> None:
        entry = self.data["runs"].setdefault(point.name, {"point": dataclasses.asdict(point)})
        entry["status"] = status

    def set(self, name: str, status: str, error: str | None = None) -> None:
        entry = self.data["runs"][name]
        entry["status"] = status
        entry.pop("error", None)
        if error:
            entry["error"] = error

    def save(self) -> None:
        # Merge with the file as it is now: another invocation on the same sweep (a larger grid run
        # side by side) may have added runs since this one read it.
        try:
            on_disk = json.loads(self.path.read_text())["runs"]
        except (OSError, ValueError, KeyError, TypeError):
            on_disk = {}
        self.data["runs"] = {**on_disk, **self.data["runs"]}
        save_json(self.path, self.data)


def _tee(log: Callable[[str], None], path: Path) -> Callable[[str], None]:
    """Every sweep line also goes to DIR/sweep.log: the sweep's own record, across invocations."""
    def both(line: str) -> None:
        log(line)
        with open(path, "a") as f:
            f.write(line + "\n")

    return both


def _result_line(r: dict, index: int, total: int) -> str:
    head = f"[{index}/{total}] {r['name']}: "
    if r["status"] in ("done", "skipped"):
        s = r["summary"]
        tail = f"; {r['wall_s']:.0f} s" if "wall_s" in r else " (finished earlier)"
        if r.get("packed"):
            tail += f" (a pack of {r['packed']})"
        return f"{head}{landmarks_text(s)}; best test acc {s['best_test_acc']:.3f}{tail}"
    if r["status"] == "locked":
        return f"{head}left alone: {r['error']}"
    if r["status"] == "interrupted":
        return f"{head}interrupted; checkpoint saved"
    return f"{head}failed: {r['error']}"


def run_sweep(given: dict[str, Any], log: Callable[[str], None] = print) -> int:
    dataset = given.get("dataset", "modular")
    sweep_dir = Path(given.get("out") or Path("sweeps") / dataset)
    for flag in ("resume", "force"):
        if given.get(flag):
            raise UsageError(f"sweep takes no --{flag}: rerunning the command resumes it; use a new --out to start over")
    points = grid_points(given, dataset)
    configs = [point_config(given, p, sweep_dir) for p in points]
    if dataset == "modular":  # a size past the pool would fail every run of it: say so before any starts
        from .data.modular import pool_size

        pool = pool_size(configs[0].p, configs[0].op)
        too_big = sorted({c.train_size for c in configs if c.train_size is not None and c.train_size > pool})
        if too_big:
            raise UsageError(f"--train-sizes {too_big[0]:,} exceeds the training pool of {pool:,} pairs "
                             f"(75 % of the {configs[0].p}² pairs); pass at most {pool:,}")
    shared = shared_settings(configs[0], given)
    for p, c in zip(points, configs):  # a grid point that changes a shared setting is a bug in the grid
        assert shared_settings(c, given) == shared, p.name
    if sweep_dir.exists() and not sweep_dir.is_dir():
        raise UsageError(f"--out {sweep_dir} is a file, not a directory; choose another --out")
    book = SweepFile(sweep_dir, shared)  # refuses a sweep directory of other shared settings
    statuses = {p.name: run_status(sweep_dir / p.name, c.steps, c.stop_after_generalising)
                for p, c in zip(points, configs)}
    todo = [c for p, c in zip(points, configs) if statuses[p.name] != "done"]
    units = plan_units(todo, given.get("pack", "auto"), configs[0].device)
    if given.get("dry_run"):
        return show_plan(sweep_dir, configs, statuses, units, log)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    log = _tee(log, sweep_dir / "sweep.log")
    for p in points:
        book.add(p, "done" if statuses[p.name] == "done" else "pending")
    book.save()

    # Runs resumed only to record a raised --steps (they stop at once): no work to plan or time by.
    budget_only = {Path(c.out).name for c in todo if _at_its_stop(c)}
    trains = [any(Path(c.out).name not in budget_only for c in u) for u in units]
    units = [u for u, t in zip(units, trains) if not t] + [u for u, t in zip(units, trains) if t]  # quick ones first
    training = sum(trains)
    executor, jobs = given.get("executor", "local"), given.get("jobs", "auto")
    if jobs == "auto":  # (Ray sizes its own concurrency: one task's threads stay all the cores, as before)
        jobs = auto_jobs(max(1, training), given.get("threads_per_run"), _on_cuda(configs[0].device)) \
            if executor == "local" else 1
    threads = given.get("threads_per_run") or max(1, resources.cores() // jobs)
    finished_before = len(points) - len(todo)
    packs = [len(u) for u in units if len(u) > 1]
    to_train = f"{len(todo)} to train" + (f", {len(budget_only)} of them only to record the raised --steps"
                                          if budget_only else "")
    log(f"sweep {sweep_dir}: {len(points)} runs ({finished_before} finished before, {to_train}) on "
        f"{executor}" + (f", {jobs} at a time" if executor == "local" and jobs > 1 else "") +
        f", {threads} thread{'s' * (threads > 1)} per run" +
        (f"; packed: {len(packs)} pack{'s' * (len(packs) > 1)} of {'/'.join(map(str, sorted(set(packs))))} runs"
         if packs else ""))
    if packs and not _on_cuda(configs[0].device):
        log("note: packing saves kernel launches, which a CPU does not have: there a pack computes its runs in "
            "turn, at about their unpacked speed (BENCHMARKS.md), and --pack auto does not pack")
    started, walls, counts = time.perf_counter(), [], {"done": 0, "interrupted": 0, "locked": 0, "failed": 0}
    unit_dicts = [[dataclasses.asdict(c) for c in u] for u in units]
    i = 0
    with StopFlag() as stop:  # Ctrl-C: runs in progress checkpoint by their own handlers; nothing new starts
        if executor == "ray":
            results = _run_ray(unit_dicts, threads, given.get("gpus_per_run", 0.0), given.get("ray_address"), stop)
        else:
            results = _run_local(unit_dicts, threads, jobs, stop)
        for unit_results in results:
            for r in unit_results:
                i += 1
                status = "done" if r["status"] == "skipped" else r["status"]
                counts[status] += 1
                if status == "interrupted":
                    stop.set = True  # the run took the Ctrl-C; start no other
                book.set(r["name"], {"locked": "running elsewhere"}.get(status, status), r.get("error"))
                log(_result_line(r, finished_before + i, len(points)))
            book.save()
            if any(r["name"] not in budget_only for r in unit_results):
                training -= 1
                walls += [max(r["wall_s"] for r in unit_results if "wall_s" in r)] if any(
                    "wall_s" in r and r["status"] == "done" for r in unit_results) else []
            if training and walls and not stop.set:
                parallel = min(training, jobs if executor == "local" else max(1, resources.cores() // threads))
                eta = sum(walls) / len(walls) * training / parallel
                log(f"sweep: {finished_before + counts['done']} done, {len(todo) - i} to go "
                    f"({training} {'pack' if packs else 'run'}{'s' * (training > 1)}, {parallel} at a time); "
                    f"ETA {eta / 60:.1f} min")
    wall = time.perf_counter() - started
    done = finished_before + counts["done"]
    log(f"sweep done: {done}/{len(points)} runs finished in {wall:.0f} s"
        + "".join(f"; {n} {k}" for k, n in counts.items() if n and k != "done")
        + f"; analyse with: grokfast-train report {sweep_dir}")
    if counts["interrupted"] or (stop.set and done < len(points)):
        log("interrupted: rerun the same command to continue")
        return 130
    if counts["locked"]:
        log("runs being trained by another process were left to it: rerun the same command once it has finished")
    return 0 if done == len(points) else 1


def _at_its_stop(cfg: Config) -> bool:
    """A finished run that its early stop ends where it stands (resumed only to record a larger budget)."""
    try:
        s = json.loads((Path(cfg.out) / rundir.SUMMARY).read_text())
        return generalised_for(cfg.stop_after_generalising, s.get("final_step", 0), s.get("generalization_step"))
    except (OSError, ValueError, KeyError, TypeError):
        return False


def show_plan(sweep_dir: Path, configs: list[Config], statuses: dict[str, str], units: list[list[Config]],
              log: Callable[[str], None]) -> int:
    """--dry-run: what rerunning the command would do to each run, and how the work would be grouped;
    nothing is written."""
    pack_of = {c.out: i for i, u in enumerate((u for u in units if len(u) > 1), 1) for c in u}
    counts: Counter[str] = Counter()
    lines = []
    for c in configs:
        status = statuses[Path(c.out).name]
        holder = rundir.lock_holder(Path(c.out)) if status != "done" else None
        if holder:
            status = "running elsewhere"
        counts[status] += 1
        stops_at_once = status == "resumable" and _at_its_stop(c)
        if stops_at_once:
            what = (f"stops at once, at step {_start_step(c):,} (it has generalised): records the budget "
                    f"of {c.steps:,} steps")
        elif status == "resumable":  # the only one that reads the checkpoint
            what = f"resumes from its checkpoint at step {_start_step(c):,} of {c.steps:,}"
        else:
            what = {"done": "done: skipped",
                    "running elsewhere": f"being trained by another process (pid {holder}): left to it",
                    "partial": "starts over (stopped before its first checkpoint)",
                    "new": f"new: trains {c.steps:,} steps"}[status]
        if status in ("resumable", "partial", "new") and c.stop_after_generalising is not None and not stops_at_once:
            what += f", or until {c.stop_after_generalising:,} steps after it generalises"
        lines.append(f"  {Path(c.out).name}  {what}" + (f"  [pack {pack_of[c.out]}]" if c.out in pack_of else ""))
    log(f"sweep {sweep_dir} (dry run, nothing written): {len(configs)} runs: "
        + ", ".join(f"{counts[k]} {k}" for k in ("done", "running elsewhere", "resumable", "partial", "new") if counts[k])
        + f"; {len(units)} unit{'s' * (len(units) != 1)} of work"
        + (f", {len(pack_of)} runs in {max(pack_of.values())} packs" if pack_of else ""))
    for line in lines:
        log(line)
    return 0


def add_sweep_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sweep grid (comma-separated lists; a single-run flag such as --hidden is a one-value axis)")
    g.add_argument("--fracs", help="data fractions, e.g. 0.1,0.2,0.3 (default for text: 0.1..1.0)")
    g.add_argument("--train-sizes", help="training-set sizes (default for modular: 1000..9500 by 500, the paper's)")
    g.add_argument("--hidden-sizes", help="hidden sizes, e.g. 16,32,64 (model-wise; heads and text FFN stay fixed)")
    g.add_argument("--layers", help="layer counts, e.g. 1,2,4")
    g.add_argument("--seeds", help="seeds, e.g. 0,1,2")
    e = p.add_argument_group("execution")
    e.add_argument("--executor", choices=("local", "ray"), help="local (default) or ray")
    e.add_argument("--jobs", type=_jobs, help="local: runs at once, each in its own process: auto (default: on the "
                                              "CPU one per core, within memory; on CUDA 1) or N")
    e.add_argument("--threads-per-run", type=int, help="CPU threads per run (default: cores / jobs)")
    e.add_argument("--ray-address", help="ray: address of an existing cluster (default: start a local instance)")
    e.add_argument("--gpus-per-run", type=float, help="ray: GPU share per run (per pack), e.g. 0.25 (default 0)")
    e.add_argument("--dry-run", action="store_true", help="show what the command would train, resume or skip "
                                                          "(and how it would pack runs), then exit; writes nothing")
    e.add_argument("--pack", type=_pack_width, help="train runs of one shape as one stacked model: auto (default: "
                                                    "on CUDA, sized to its memory; off on CPU), off, or N (at most "
                                                    "N runs per pack)")


def _jobs(text: str) -> str | int:
    return word_or_int(text, ("auto",), "auto or a positive integer")


def _pack_width(text: str) -> str | int:
    return word_or_int(text, ("auto", "off"), "auto, off or a positive integer", minimum=1)


def validate_execution(given: dict[str, Any]) -> None:
    for key in ("jobs", "threads_per_run"):
        if key in given and given[key] != "auto" and given[key] < 1:
            raise UsageError(f"--{key.replace('_', '-')} must be a positive integer, got {given[key]}")
    if given.get("gpus_per_run", 0) < 0:
        raise UsageError(f"--gpus-per-run must be >= 0, got {given['gpus_per_run']}")
    if given.get("executor", "local") == "local":
        for key in ("ray_address", "gpus_per_run"):
            if key in given:
                raise UsageError(f"--{key.replace('_', '-')} applies to --executor ray")
    elif "jobs" in given:
        raise UsageError("--jobs applies to --executor local; Ray runs as many runs as its resources allow")
