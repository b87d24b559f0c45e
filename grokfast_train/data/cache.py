"""The on-disk cache for trained tokenizers and tokenised datasets.

Tokenising 25k–560k reviews and training a WordPiece vocabulary take seconds to minutes;
a restart, a resumed run or the next run of a sweep should not pay that again. Entries are
named by a hash of everything that determines their content (see ``key``), so a changed
input simply misses the cache, and every file is written to a temporary name and moved into
place with ``os.replace``, so an interrupted write never leaves a half-written entry.

Entries are built under an exclusive file lock: runs of a sweep started together on a cold
cache then build each entry once and share it (this matters for the tokenizer, whose training
is not bit-reproducible, see ``tokenizer.py``).

Location: ``cfg.cache_dir`` (``--cache-dir``), else ``$GROKFAST_CACHE``, else
``$XDG_CACHE_HOME/grokfast-train`` (``~/.cache/grokfast-train``).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from ..errors import RunError

FORMAT = 1  # bump when the layout of cached entries changes


def cache_root(cache_dir: str | None) -> Path:
    """The cache directory, created if needed."""
    if cache_dir:
        root = Path(cache_dir).expanduser()
    elif os.environ.get("GROKFAST_CACHE"):
        root = Path(os.environ["GROKFAST_CACHE"]).expanduser()
    else:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        root = Path(base) / "grokfast-train"
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunError(f"cannot create the cache directory {root} ({e.strerror}); "
                       f"pass --cache-dir DIR with a writable directory") from None
    return root


def key(*parts: Any) -> str:
    """A short stable hash of JSON-serialisable parts (the cache format version included)."""
    blob = json.dumps([FORMAT, *parts], sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


def file_digest(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see either the old file or the whole new one."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o644)  # mkstemp makes it private; cache entries are ordinary files
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def save_tensors(path: Path, entry: dict[str, Any]) -> None:
    buf = io.BytesIO()
    torch.save(entry, buf)
    try:
        atomic_write(path, buf.getvalue())
    except OSError as e:
        raise RunError(f"cannot write the cache file {path} ({e.strerror}); "
                       f"free some space or pass --cache-dir DIR") from None


def load_tensors(path: Path) -> dict[str, Any] | None:
    """The cached entry, or None when it is absent or unreadable (it is then rebuilt)."""
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # a truncated or foreign file is a cache miss, not an error
        return None


@contextmanager
def locked(path: Path, log: Callable[[str], None]) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (a lock file) while building the entry it guards."""
    try:
        import fcntl
    except ImportError:  # not on POSIX: no locking, concurrent cold runs may build twice
        yield
        return
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"waiting for another run that is building {path.with_suffix('')} ...")
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
