"""Atomic checkpoint files: a crash mid-write never destroys the last good checkpoint."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from .errors import RunError

CHECKPOINT = "checkpoint.pt"


def atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic on POSIX: readers see the old file or the new one
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_json(path: Path, obj: Any) -> None:
    atomic_write(path, lambda f: f.write((json.dumps(obj, indent=2) + "\n").encode()))


def save_checkpoint(run_dir: Path, state: dict) -> None:
    atomic_write(run_dir / CHECKPOINT, lambda f: torch.save(state, f))


def load_checkpoint(run_dir: Path) -> dict:
    path = run_dir / CHECKPOINT
    if not path.exists():
        raise RunError(f"no checkpoint in {run_dir} to resume from; start a new run without --resume")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)  # tensors and plain data only
        if not isinstance(state, dict) or "step" not in state:
            raise ValueError("missing fields")
    except Exception as e:
        raise RunError(f"checkpoint {path} is corrupt or unreadable ({type(e).__name__}); "
                       f"rerun with --force to start over") from None
    return state
