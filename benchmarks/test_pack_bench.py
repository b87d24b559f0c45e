"""Packed runs against the same runs trained one after another: run-steps per second.

For R runs of one shape, two rows measured side by side on one device:
  pack-R    one ``PackedRun`` step: R run-steps in one stacked model (one gather, one launch sequence,
            one PackedAdamW launch)
  solo-xR   R ordinary ``Run`` steps, one per run, one run after another (what a sweep without
            packing does, interleaved so both see the same machine state)
Shapes (benchmarks/test_step_bench.py's): modular -- batch 512 of the paper's 7-token sequences (30 %
of the pairs each, every run its own seed), hidden 128; IMDB -- batch 128 x 256 random tokens with
padding, hidden 128, vocab 30,522. R in 1, 8, 64 (modular) and 1, 8 (IMDB). Every run is a real run:
its own subset, init and optimiser state, metrics summed on the device.

The table: ``python scripts/pack_table.py BENCH.json`` (run-steps/s of each row, and pack / solo).
Run: ``pytest benchmarks/test_pack_bench.py`` (CPU; CUDA rows where a GPU is present), ``-k "modular and 8"``.
"""

from __future__ import annotations

import platform

import pytest
import torch

from grokfast_train.pack import PackedRun
from grokfast_train.train import Run

from test_step_bench import _config, _task  # noqa: E402  (benchmarks/ is on sys.path under pytest)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
WIDTHS = {"modular": [1, 8, 64], "imdb": [1, 8]}
CASES = [(d, r) for d, widths in WIDTHS.items() for r in widths]
ROUNDS = {"cpu": 3, "cuda": 20}
STEPS_PER_ROUND = {"cpu": 1, "cuda": 10}


def _pack(dataset, device, tmp_path, runs):
    cfgs = [_config(dataset, device, tmp_path / f"p{i}", seed=i) for i in range(runs)]
    tasks = [_task(dataset, c) for c in cfgs]
    return PackedRun(cfgs, log=lambda _: None, run_logs=[lambda _: None] * runs, tasks=tasks).advance


def _solos(dataset, device, tmp_path, runs):
    steps = []
    for i in range(runs):
        cfg = _config(dataset, device, tmp_path / f"s{i}", seed=i)
        steps.append(Run(cfg, log=lambda _: None, task=_task(dataset, cfg)).advance)

    def advance(limit):
        for step in steps:  # each run's own step, one run after another
            step(1)
        return 1

    return advance


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("row", ["pack", "solo"])
@pytest.mark.parametrize("dataset,runs", CASES, ids=[f"{d}-{r}" for d, r in CASES])
def test_run_steps(benchmark, dataset, runs, row, device, tmp_path):
    torch.manual_seed(0)
    advance = (_pack if row == "pack" else _solos)(dataset, device, tmp_path, runs)
    per_round = STEPS_PER_ROUND[device]
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def one_round():
        for _ in range(per_round):
            advance(1)
        sync()

    one_round()  # warm-up: kernel compilation, CUDA-graph capture, allocator
    import triton

    benchmark.group = f"pack {dataset} R={runs} on {device}"
    benchmark.extra_info.update(
        kind="pack", row=row, runs=runs, dataset=dataset, steps_per_round=per_round, run_steps_per_round=per_round * runs,
        device=torch.cuda.get_device_name() if device == "cuda" else "cpu", threads=torch.get_num_threads(),
        torch=torch.__version__, triton=triton.__version__, python=platform.python_version())
    benchmark.pedantic(one_round, rounds=ROUNDS[device], iterations=1, warmup_rounds=0)
