"""Packed runs against the same runs trained one after another: run-steps per second.

For R runs of one shape, rows measured side by side on one device:
  pack          one ``PackedRun`` step as the device computes it by default: R run-steps in one
                stacked model on CUDA (one gather, one launch sequence, one PackedAdamW launch); run
                by run on the CPU (each run's forward, backward and update in turn)
  pack-stacked  (CPU only) the stacked model on the CPU as well: what the CPU default is chosen against
  pack-bf16     (CUDA only, the widest R of each shape) the pack under ``--dtype bf16``: tensor-core products
                where fp32 (the paper's setting, no TF32) has none; compared with the same fp32 solo runs
  pack-pdl      (CUDA sm_90+ only, the widest R) the pack with every kernel launched with programmatic
                dependent launch (kernels._pdl); against the same solo runs, which launch without it
  solo          R ordinary ``Run`` steps, one per run, one run after another (what a sweep without
                packing does)
Shapes (benchmarks/test_step_bench.py's): modular -- batch 512 of the paper's 7-token sequences (30 %
of the pairs each, every run its own seed), hidden 128; IMDB -- batch 128 x 256 random tokens with
padding, hidden 128, vocab 30,522. R in 1, 8, 64 (modular) and 1, 8 (IMDB). Every run is a real run:
its own subset, init and optimiser state, metrics summed on the device.

Both rows advance as the trainer's loop does (``advance(limit)``): on a GPU (backend triton, CUDA graphs
on) a call replays K steps from one graph -- K = 5 for the modular preset's eval interval, 8 for IMDB's
-- so a round of 40 steps (a multiple of both) is whole replays, each run of solo-xR replaying its own
graphs in turn. A round ends with one synchronisation; run-steps per round = R x steps per round.
Rounds on a GPU: 10, 5 at R = 64 (64 solo runs x 40 steps a round, each with its own captured graphs:
the section of scripts/gpu_check.sh that runs this file has ~70 s).

The table: ``python scripts/pack_table.py BENCH.json`` (run-steps/s of each row, and pack / solo).
Run: ``pytest benchmarks/test_pack_bench.py`` (CPU; CUDA rows where a GPU is present), ``-k "modular and 8"``.
"""

from __future__ import annotations

import gc
import platform

import pytest
import torch

from grokfast_train.pack import PackedRun
from grokfast_train.train import Run
from kernels import set_pdl

from test_step_bench import _config, _task  # noqa: E402  (benchmarks/ is on sys.path under pytest)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
WIDTHS = {"modular": [1, 8, 64], "imdb": [1, 8]}
CASES = [(d, r) for d, widths in WIDTHS.items() for r in widths]
ROUNDS = {"cpu": 9, "cuda": 10}
ROUNDS_AT_64 = {"cpu": 5, "cuda": 5}
STEPS_PER_ROUND = {"cpu": 1, "cuda": 40}  # 40: a multiple of every K used (5, 8)


def _pack(dataset, device, tmp_path, runs, stacked=None, dtype="fp32"):
    cfgs = [_config(dataset, device, tmp_path / f"p{i}", seed=i, dtype=dtype) for i in range(runs)]
    tasks = [_task(dataset, c) for c in cfgs]
    pack = PackedRun(cfgs, log=lambda _: None, run_logs=[lambda _: None] * runs, tasks=tasks, stacked=stacked)
    return pack.advance, dict(unroll=pack.stepper.unroll, cuda_graph=pack.cfg.cuda_graph, backend=pack.cfg.backend,
                              compute=("stacked" if pack.stacked else "run by run") + (", bf16" * (dtype == "bf16")))


def _solos(dataset, device, tmp_path, runs):
    solos = []
    for i in range(runs):
        cfg = _config(dataset, device, tmp_path / f"s{i}", seed=i)
        solos.append(Run(cfg, log=lambda _: None, task=_task(dataset, cfg)))

    def advance(limit):
        taken = {run.advance(limit) for run in solos}  # each run's own step (or replay), one run after another
        assert len(taken) == 1, taken  # same settings, same schedule: every run takes the same steps
        return taken.pop()

    first = solos[0]
    return advance, dict(unroll=first.stepper.unroll, cuda_graph=first.cfg.cuda_graph, backend=first.cfg.backend)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("row", ["pack", "pack-stacked", "pack-bf16", "pack-pdl", "solo"])
@pytest.mark.parametrize("dataset,runs", CASES, ids=[f"{d}-{r}" for d, r in CASES])
def test_run_steps(benchmark, dataset, runs, row, device, tmp_path):
    if row == "pack-stacked" and device != "cpu":
        pytest.skip("on CUDA the pack row is the stacked model already")
    if row in ("pack-bf16", "pack-pdl") and (device != "cuda" or runs != max(WIDTHS[dataset])):
        pytest.skip(f"{row}: a GPU row, at the widest R")
    if row == "pack-pdl" and torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("programmatic dependent launch needs sm_90 or later")
    previous = set_pdl(row == "pack-pdl")  # the pack's kernels launched (and captured) with PDL, or without
    try:
        _measure(benchmark, dataset, runs, row, device, tmp_path)
    finally:
        set_pdl(previous)


def _measure(benchmark, dataset, runs, row, device, tmp_path):
    gc.collect()  # the previous rows' runs, their graphs and pools (torch's first optimiser keeps its frames in a cycle)
    if device == "cuda":
        torch.cuda.empty_cache()
    torch.manual_seed(0)
    if row == "solo":
        advance, info = _solos(dataset, device, tmp_path, runs)
    else:
        advance, info = _pack(dataset, device, tmp_path, runs, stacked=True if row == "pack-stacked" else None,
                              dtype="bf16" if row == "pack-bf16" else "fp32")
        info["compute"] += ", PDL" * (row == "pack-pdl")
    per_round = STEPS_PER_ROUND[device]
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def one_round():
        done = 0
        while done < per_round:  # the trainer loop's own calls: K-step replays where K fits
            done += advance(per_round - done)
        sync()

    one_round()  # warm-up: kernel compilation, CUDA-graph capture (K steps and 1 step), allocator
    import triton

    benchmark.group = f"pack {dataset} R={runs} on {device}"
    benchmark.extra_info.update(
        kind="pack", row=row, runs=runs, dataset=dataset, steps_per_round=per_round,
        run_steps_per_round=per_round * runs, device=torch.cuda.get_device_name() if device == "cuda" else "cpu",
        device_type=device, threads=torch.get_num_threads(), torch=torch.__version__, triton=triton.__version__,
        python=platform.python_version(), **info)
    rounds = (ROUNDS_AT_64 if runs >= 64 else ROUNDS)[device]
    benchmark.pedantic(one_round, rounds=rounds, iterations=1, warmup_rounds=0)
