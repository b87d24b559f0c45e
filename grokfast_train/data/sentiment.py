"""The sentiment task (IMDB, Yelp): reviews → cached WordPiece tokens → a nested training subset.

Pipeline, each step cached so that a second run with the same data settings starts at once:

1. the source (``text.py``) names its content cheaply (``identity()``); with the tokenizer
   identity and ``max_len`` that names the token cache entry — on a hit nothing else runs;
2. otherwise the reviews are read, the tokenizer is the user's ``--tokenizer`` or one trained
   on the training pool (itself cached by source identity and ``vocab_size``), and the whole
   pool and test set are tokenised and cached;
3. the subset (``--frac`` / ``--train-size``, seeded by ``seed``) is taken after loading.

Vocabulary: ``TaskData.vocab_size = max(cfg.vocab_size, tokenizer size)``. A WordPiece vocabulary
trained on a small corpus can come out smaller than the 30522 asked for; keeping the
embedding table at ``cfg.vocab_size`` rows keeps the model the paper's shape (unused rows are
never gathered), while a larger supplied tokenizer widens it so every id is valid.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import torch

from ..config import Config
from ..errors import RunError
from . import cache
from .subset import subset_indices
from .task import TaskData
from .text import TextSplits, open_source
from .tokenizer import encode, load_tokenizer, train_wordpiece

Log = Callable[[str], None]


def _get_tokenizer(cfg: Config, splits: TextSplits, tok_id: list, root: Path, log: Log):
    """The supplied tokenizer, the cached trained one, or a freshly trained (and cached) one."""
    if cfg.tokenizer:
        path = Path(cfg.tokenizer).expanduser().resolve()
        tok = load_tokenizer(path)
        return tok, f"tokenizer {path} ({tok.get_vocab_size():,} entries)"
    path = root / f"tokenizer-{cache.key(*tok_id)}.json"
    with cache.locked(path.with_suffix(".json.lock"), log):
        if path.is_file():
            try:
                tok = load_tokenizer(path)
                log(f"using cached tokenizer {path}")
                return tok, _trained(tok, path)
            except Exception:
                log(f"cached tokenizer {path} is unreadable; training a new one")
        log(f"training WordPiece tokenizer (vocab {cfg.vocab_size:,}) on {len(splits.train_texts):,} reviews ...")
        t0 = time.perf_counter()
        tok = train_wordpiece(splits.train_texts, cfg.vocab_size)
        log(f"  trained in {time.perf_counter() - t0:.1f} s: {tok.get_vocab_size():,} entries; saved to {path}")
        try:
            cache.atomic_write(path, tok.to_str().encode())
        except OSError as e:
            raise RunError(f"cannot write the cache file {path} ({e.strerror}); pass --cache-dir DIR") from None
    return tok, _trained(tok, path)


def _trained(tok, path: Path) -> str:
    return f"WordPiece tokenizer trained on the pool ({tok.get_vocab_size():,} entries, {path})"


def _build_tokens(cfg: Config, source, tok_id: list, root: Path, log: Log) -> dict:
    log(f"loading {source.name} ...")
    t0 = time.perf_counter()
    splits = source.load()
    log(f"  {splits.description} ({time.perf_counter() - t0:.1f} s)")
    tok, tok_what = _get_tokenizer(cfg, splits, tok_id, root, log)
    n = len(splits.train_texts) + len(splits.test_texts)
    log(f"tokenising {n:,} reviews (max length {cfg.max_len}) ...")
    t0 = time.perf_counter()
    pool_ids, pool_len = encode(tok, splits.train_texts, cfg.max_len)
    test_ids, test_len = encode(tok, splits.test_texts, cfg.max_len)
    log(f"  done in {time.perf_counter() - t0:.1f} s; {(pool_len == cfg.max_len).float().mean():.0%} of the pool "
        f"at the length limit (truncated)")
    return dict(pool_ids=pool_ids, pool_len=pool_len, pool_y=splits.train_labels,
                test_ids=test_ids, test_len=test_len, test_y=splits.test_labels,
                tokenizer_vocab=tok.get_vocab_size(), pad_id=tok.token_to_id("[PAD]"),
                cls_id=tok.token_to_id("[CLS]"), description=f"{splits.description}; {tok_what}")


def _mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    return torch.arange(max_len) < lengths.long().unsqueeze(1)


def load_sentiment(cfg: Config, log: Log = print) -> TaskData:
    root = cache.cache_root(cfg.cache_dir)
    source = open_source(cfg)
    data_id = source.identity()
    if cfg.tokenizer:
        load_tokenizer(cfg.tokenizer)  # fail now on a bad file, even when the tokens are cached
        tok_id = ["file", cache.file_digest(Path(cfg.tokenizer).expanduser())]
    else:
        tok_id = ["wordpiece", data_id, cfg.vocab_size]
    path = root / f"tokens-{cfg.dataset}-{cache.key(cfg.dataset, data_id, tok_id, cfg.max_len)}.pt"
    entry = cache.load_tensors(path)
    if entry is not None:
        log(f"using cached tokens {path}")
    else:
        with cache.locked(path.with_suffix(".pt.lock"), log):
            entry = cache.load_tensors(path)  # another run may have built it while we waited
            if entry is not None:
                log(f"using cached tokens {path}")
            else:
                if path.exists():
                    log(f"cached tokens {path} are unreadable; rebuilding them")
                entry = _build_tokens(cfg, source, tok_id, root, log)
                cache.save_tensors(path, entry)
                log(f"cached tokens in {path}")

    pool_size = len(entry["pool_y"])
    idx = subset_indices(pool_size, cfg.frac, cfg.train_size, cfg.seed)
    log(f"training on {len(idx):,} of {pool_size:,} pool reviews (seed {cfg.seed}); "
        f"testing on all {len(entry['test_y']):,}")
    return TaskData(
        name=cfg.dataset, source=entry["description"],
        train_x=entry["pool_ids"][idx].long(), train_y=entry["pool_y"][idx].long(),
        test_x=entry["test_ids"].long(), test_y=entry["test_y"].long(),
        vocab_size=max(cfg.vocab_size, int(entry["tokenizer_vocab"])), num_classes=2, readout_pos=0,
        pool_size=pool_size, train_mask=_mask(entry["pool_len"][idx], cfg.max_len),
        test_mask=_mask(entry["test_len"], cfg.max_len), pad_id=int(entry["pad_id"]))
