"""``grokfast-train``: the command line. Parses flags into a Config, runs it, turns errors into exit codes.

Exit codes: 0 done, 1 runtime error (data, checkpoint, non-finite loss), 2 usage error,
130 interrupted (a checkpoint has been written; --resume continues).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from .config import (CUDA_GRAPH_MODES, DATA_SOURCES, DATASETS, DTYPES, FULL_BATCH, MODULAR_FORMATS, MODULAR_OPS,
                     ORDERS, Config, resolve, validate)
from .errors import OneLineParser, RunError, one_line_errors, word_or_int

PROG = "grokfast-train"


def _batch_size(text: str) -> int | str:
    return word_or_int(text, (FULL_BATCH,), f"a positive integer or '{FULL_BATCH}'")


def _steps_or_off(text: str) -> int | None:
    steps = word_or_int(text, ("off",), "a number of steps or 'off'")
    return None if steps == "off" else steps


def build_parser(prog: str = PROG, conflict_handler: str = "error") -> argparse.ArgumentParser:
    p = OneLineParser(prog=prog, argument_default=argparse.SUPPRESS, conflict_handler=conflict_handler,
                description="Train a small transformer in the grokking configuration of 'Critical Data Size "
                            "of Language Models from a Grokking Perspective'. Unset options take the "
                            "dataset's paper preset.")
    d = p.add_argument_group("data")
    d.add_argument("--dataset", choices=DATASETS, help="modular (default), imdb or yelp")
    d.add_argument("--frac", type=float, help="fraction of the training pool to train on, in (0, 1]")
    d.add_argument("--train-size", type=int, help="absolute number of training examples (instead of --frac)")
    d.add_argument("--data-source", help=f"where text data comes from: {', '.join(DATA_SOURCES)} "
                                         f"(default hub; local with --data-dir)")
    d.add_argument("--data-dir", help="local copy: aclImdb layout, or train/test .parquet/.csv/.jsonl with text,label")
    d.add_argument("--tokenizer", help="a tokenizer.json to use instead of training WordPiece on the pool")
    d.add_argument("--cache-dir", help="tokeniser and token cache (default ~/.cache/grokfast-train)")
    d.add_argument("--max-len", type=int, help="text sequence length (default 256)")
    d.add_argument("--vocab-size", type=int, help="WordPiece vocabulary size (default 30522)")
    d.add_argument("--p", type=int, help="modulus for --dataset modular (default 113)")
    d.add_argument("--op", choices=MODULAR_OPS, help="modular operation (default add)")
    d.add_argument("--modular-format", choices=MODULAR_FORMATS,
                   help="paper (default): 'a + b %% p = c', 7 tokens, vocab p+4, full batch, betas 0.9 0.98; "
                        "compact: [a, op, b, =] with this tool's earlier minibatch preset")
    d.add_argument("--split-seed", type=int, help="seed of the fixed train/test split (default 0)")
    m = p.add_argument_group("model")
    m.add_argument("--layers", dest="n_layers", type=int, help="transformer layers (default 1)")
    m.add_argument("--hidden", type=int, help="hidden size (default 128)")
    m.add_argument("--heads", type=int, help="attention heads (default 4)")
    m.add_argument("--ffn", type=int, help="feed-forward size (default 512 for text at any --hidden, "
                                           "as the paper's configs; 4 x hidden for modular, GPT's rule)")
    m.add_argument("--init-std", type=float, help="std of the normal init (default 0.02)")
    m.add_argument("--init-scale", type=float, help="alpha: every parameter x alpha after init "
                                                    "(default 10 for text, 1 for modular)")
    o = p.add_argument_group("optimisation")
    o.add_argument("--lr", type=float, help="AdamW learning rate (default 1e-3)")
    o.add_argument("--weight-decay", type=float, help="decoupled weight decay (default 1e-2 text, 1 modular)")
    o.add_argument("--betas", type=float, nargs=2, metavar=("B1", "B2"),
                   help="AdamW betas (default 0.9 0.98 modular, 0.9 0.999 text)")
    o.add_argument("--eps", type=float, help="AdamW epsilon (default 1e-8)")
    o.add_argument("--batch-size", type=_batch_size, help="batch size, or 'full' for the whole training subset "
                                                          "every step (default 128 text, full modular)")
    o.add_argument("--order", choices=ORDERS, help="batch order: cyclic (default; the paper's fixed order over "
                                                   "the subset) or shuffle (a new permutation every epoch)")
    o.add_argument("--steps", type=int, help="optimiser steps (default 700000 text, 100000 modular)")
    o.add_argument("--grokfast-alpha", type=float, help="turn on the Grokfast EMA gradient filter with this alpha (e.g. 0.98)")
    o.add_argument("--grokfast-lamb", type=float, help="Grokfast amplification lambda (default 2.0)")
    r = p.add_argument_group("run")
    r.add_argument("--seed", type=int, help="seed of the subset, init and batch order (default 0)")
    r.add_argument("--eval-every", type=int, help="steps between full test-set evaluations "
                                                  "(default 10 modular, 1000 text)")
    r.add_argument("--eval-batch-size", type=int, help="evaluation batch size (default: 1024 for text, 4096 for modular)")
    r.add_argument("--checkpoint-every", type=int, help="steps between checkpoints (default: 1000 rounded up "
                                                        "to a multiple of --eval-every)")
    r.add_argument("--gen-threshold", type=float, help="test accuracy that counts as generalised "
                                                       "(default 0.95 modular, 0.8 text)")
    r.add_argument("--mem-threshold", type=float, help="train accuracy that counts as memorised (default 0.99)")
    r.add_argument("--stop-after-generalising", type=_steps_or_off, metavar="STEPS",
                   help="end the run at the first evaluation STEPS or more steps after it generalised, with a "
                        "checkpoint (--resume --stop-after-generalising off trains on); at least 400 (4 sigma of "
                        "the report's smoothing) keeps its steps-to-threshold; default off: all --steps, as the paper")
    r.add_argument("--device", choices=("auto", "cpu", "cuda"), help="default auto: CUDA when present")
    r.add_argument("--backend", choices=("auto", "torch", "triton"),
                   help="torch: plain PyTorch; triton: fused kernels (CUDA); default auto")
    r.add_argument("--cuda-graph", choices=CUDA_GRAPH_MODES,
                   help="replay each training step (and evaluation) from a captured CUDA graph: on, off, or "
                        "auto (default: on with CUDA and --backend triton); the same trajectory either way")
    r.add_argument("--dtype", choices=DTYPES,
                   help="compute dtype: fp32 (default, the paper's) or bf16 (autocast; weights, optimiser state, "
                        "loss and metrics stay fp32)")
    r.add_argument("--out", help="run directory (default runs/<dataset>-frac<F>-seed<S>, or -n<N>- with --train-size)")
    r.add_argument("--resume", action="store_true", help="continue the run in --out (or extend it to a larger --steps)")
    r.add_argument("--force", action="store_true", help="overwrite an existing run in --out")
    r.add_argument("--quiet", action="store_true", help="plain log lines instead of a progress bar")
    r.add_argument("--log", help="also log to tensorboard and/or wandb (comma-separated; needs the extra); "
                                 "metrics.jsonl is always written")
    return p


def config_from_args(argv: list[str] | None) -> Config:
    given = vars(build_parser().parse_args(argv))
    if "betas" in given:
        given["betas"] = tuple(given["betas"])
    if not given.get("resume"):
        return resolve(Config(**given))
    # A resumed run's settings come from its config.json, not from this dataset's preset.
    from . import rundir

    run_dir = Path(given["out"]) if "out" in given else Path(rundir.default_out(resolve(Config(**given))))
    merged = rundir.merge_for_resume(rundir.saved_config(run_dir), given)
    merged = dataclasses.replace(merged, out=str(run_dir))
    try:
        validate(merged)
    except (TypeError, AttributeError):
        raise RunError(f"{run_dir / rundir.CONFIG} holds invalid settings; rerun with --force to start over") from None
    return merged


def build_sweep_parser() -> argparse.ArgumentParser:
    """Every single-run flag applies to all runs; the grid and execution flags are the sweep's own."""
    from .sweep import add_sweep_arguments

    p = build_parser(prog=f"{PROG} sweep", conflict_handler="resolve")  # --layers becomes a list
    p.description = ("Train a grid of ordinary runs (data size x hidden size x layers x seed) into --out, one run "
                     "directory per point; rerun the same command to resume. Then: grokfast-train report DIR.")
    add_sweep_arguments(p)
    return p


def _train(argv: list[str]) -> int:
    cfg = config_from_args(argv)
    from .train import run  # imported late: torch start-up is not needed for --help or a bad flag

    return 0 if run(cfg) is not None else 130


def _sweep(argv: list[str]) -> int:
    from .sweep import run_sweep, validate_execution

    given = vars(build_sweep_parser().parse_args(argv))
    if "betas" in given:
        given["betas"] = tuple(given["betas"])
    validate_execution(given)
    return run_sweep(given)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["report"]:  # grokfast-train report DIR: its own flags, no torch
        from .report import main as report_main

        return report_main(argv[1:])
    command = _sweep if argv[:1] == ["sweep"] else _train
    try:
        return one_line_errors(PROG, lambda: command(argv[1:] if command is _sweep else argv))
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if not isinstance(e, MemoryError) and type(e).__name__ != "OutOfMemoryError":  # torch's CUDA OOM
            raise  # anything else is a bug: keep its traceback
        print(f"{PROG}: error: out of memory; try a smaller --batch-size, --eval-batch-size or model", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
