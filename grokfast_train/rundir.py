"""The run directory: what is in it, when it may be reused, and how a resumed run's config is merged.

A run directory holds config.json, metrics.jsonl, checkpoint.pt and, once finished, summary.json.
Nothing in it is overwritten without --force; --resume continues it (or extends a finished run).
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import time
from pathlib import Path

from .checkpoint import CHECKPOINT
from .config import Config
from .errors import RunError, RunLocked, UsageError

CONFIG, METRICS, SUMMARY, LOCK = "config.json", "metrics.jsonl", "summary.json", ".lock"
RUN_FILES = (CONFIG, METRICS, SUMMARY, CHECKPOINT)

# Settings a resumed run may change; anything else would make it a different experiment.
# (The backend stays: its optimiser state -- torch AdamW + filter vs FusedAdamW -- is saved in its own form.)
# cuda_graph may change: a replayed step runs the same kernels as an eager one, the same trajectory;
# dtype may not: bf16 compute is another trajectory.
RESUMABLE = {"steps", "quiet", "device", "eval_batch_size", "checkpoint_every", "resume", "force", "out", "log",
             "cuda_graph", "stop_after_generalising"}


def default_out(cfg: Config) -> str:
    amount = f"n{cfg.train_size}" if cfg.train_size is not None else f"frac{cfg.frac:g}"
    return str(Path("runs") / f"{cfg.dataset}-{amount}-seed{cfg.seed}")


def saved_config(run_dir: Path) -> Config:
    try:
        saved = json.loads((run_dir / CONFIG).read_text())
        if not isinstance(saved, dict):
            raise TypeError("not a JSON object")
        return Config.from_dict(saved)
    except FileNotFoundError:
        raise UsageError(f"nothing to resume in {run_dir}: it has no {CONFIG}; start a new run without --resume") from None
    except (OSError, ValueError, TypeError) as e:
        raise RunError(f"{run_dir / CONFIG} is unreadable ({e}); rerun with --force to start over") from None


def _normal(v):
    return tuple(v) if isinstance(v, (list, tuple)) else v


def merge_for_resume(saved: Config, given: dict) -> Config:
    """The saved config with the few settings a resume may change taken from ``given``."""
    saved_values = dataclasses.asdict(saved)
    for key, value in given.items():
        if key in RESUMABLE or key not in saved_values:
            continue
        old = saved_values[key]
        if _normal(value) != _normal(old):
            raise UsageError(f"--{key.replace('_', '-')} {value} differs from the resumed run's {old}; "
                             f"a resumed run keeps its configuration (only --steps and display settings change)")
    updates = {k: v for k, v in given.items() if k in RESUMABLE and k in saved_values}
    # How it was last started (and displayed) is no setting of the run.
    updates.update(resume=True, force=given.get("force", False), quiet=given.get("quiet", False))
    return dataclasses.replace(saved, **updates)


class RunLock:
    """An exclusive lock on a run directory while one process trains in it.

    ``flock`` on ``DIR/.lock``: the kernel drops it when the process exits, however it exits, so a
    crashed or killed run never leaves a stale lock, and a second process (a repeated command, a
    sweep launched twice, a retried Ray task whose first attempt still runs) is refused at once.
    It holds on a local filesystem; on a network filesystem it is as good as that filesystem's flock.
    """

    def __init__(self, run_dir: Path):
        self._fd: int | None = None  # set before anything can raise: __del__ releases whatever was taken
        if run_dir.exists() and not run_dir.is_dir():
            raise UsageError(f"--out {run_dir} is a file, not a directory; choose another --out")
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(run_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise UsageError(f"cannot create --out {run_dir} ({e.strerror}); choose another --out") from None
        try:
            _flock_exclusive(self._fd)
        except BlockingIOError:
            holder = _pid_in(self._fd)
            os.close(self._fd)
            self._fd = None
            raise RunLocked(f"another process (pid {holder}) is training in {run_dir}; wait for it to finish "
                            f"or stop it, then rerun") from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()}\n".encode(), 0)

    def release(self, _close=os.close) -> None:
        # os.close bound at definition: a lock still held at interpreter exit (a Run kept in a script's
        # global) is released when this module's global `os` may already be None
        if self._fd is not None:
            _close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def __del__(self):
        self.release()


def _pid_in(fd: int) -> str:
    """The pid a RunLock wrote into the lock file ('?' if none yet)."""
    return os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"


def _flock_exclusive(fd: int, tries: int = 5) -> None:
    """LOCK_EX without blocking; a few quick retries first, so that a momentary probe (``lock_holder``
    of a dry run) is not taken for a process training in the directory."""
    for attempt in range(tries):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if attempt == tries - 1:
                raise
            time.sleep(0.01)


def lock_holder(run_dir: Path) -> str | None:
    """The pid of the process training in run_dir (as RunLock wrote it), or None; takes no lock, writes nothing."""
    try:
        fd = os.open(run_dir / LOCK, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # granted unless a RunLock holds it
        return None
    except BlockingIOError:
        return _pid_in(fd)
    finally:
        os.close(fd)  # drops the shared lock if it was granted


def prepare(run_dir: Path, resume: bool, force: bool) -> RunLock:
    """Lock the run directory (creating it), then refuse to clobber an existing run unless asked;
    clear it with --force. Returns the lock, held until released (Run.fit releases it)."""
    lock = RunLock(run_dir)  # first: nothing is read or removed while another process trains here
    try:
        present = [name for name in RUN_FILES if (run_dir / name).exists()]
        if resume:
            if CHECKPOINT not in present:
                raise UsageError(f"nothing to resume in {run_dir}: no {CHECKPOINT}; start a new run without --resume")
            return lock
        if present and not force:
            if SUMMARY in present:
                advice = "pass --resume --steps N to extend it, --force to overwrite it"
            elif CHECKPOINT in present:
                advice = "pass --resume to continue it, --force to overwrite it"
            else:  # stopped before its first checkpoint: nothing to resume
                advice = "it has no checkpoint to resume from; pass --force to start it over"
            what = "a finished run" if SUMMARY in present else "an unfinished run"
            raise UsageError(f"{run_dir} holds {what}; {advice}, or choose another --out")
        for name in present:
            (run_dir / name).unlink()
    except BaseException:
        lock.release()
        raise
    return lock
