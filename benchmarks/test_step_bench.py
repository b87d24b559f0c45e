"""Whole training-step throughput at the paper's shapes: eager PyTorch vs what the trainer runs.

Variants, each one full step (sample, forward, backward, optimiser, metric update):
  eager-full      -- every position through every layer, torch.optim.AdamW (the unfused baseline)
  eager-readout   -- the last layer computes only the position the loss reads (the trainer's torch path)
  triton-readout  -- the same with the Triton kernels and FusedAdamW (CUDA only)
pytest-benchmark groups them by shape, so each table is a side-by-side ratio on one device.
Run: ``pytest benchmarks/test_step_bench.py`` (CPU and, where present, CUDA).
"""

from __future__ import annotations

import pytest
import torch

from grokfast_train.config import Config, resolve
from grokfast_train.data.task import TaskData
from grokfast_train.train import Run

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def synthetic_task(dataset: str, n: int, seed: int = 0) -> TaskData:
    """Random tokens of the paper's shapes; throughput does not depend on what the tokens say."""
    g = torch.Generator().manual_seed(seed)
    if dataset == "modular":
        p = 113
        x = torch.randint(0, p, (n, 4), generator=g)
        x[:, 1], x[:, 3] = p, p + 1
        y = torch.randint(0, p, (n,), generator=g)
        return TaskData("modular", "synthetic", x, y, x[:1024], y[:1024], vocab_size=p + 3, num_classes=p + 3,
                        readout_pos=3, pool_size=n)
    L, V = 256, 30522
    x = torch.randint(5, V, (n, L), generator=g)
    lengths = torch.randint(L // 2, L + 1, (n,), generator=g)
    mask = torch.arange(L)[None, :] < lengths[:, None]
    x = torch.where(mask, x, torch.zeros_like(x))
    x[:, 0] = 2  # [CLS]
    y = torch.randint(0, 2, (n,), generator=g)
    return TaskData(dataset, "synthetic", x, y, x[:256], y[:256], vocab_size=V, num_classes=2, readout_pos=0,
                    pool_size=n, train_mask=mask, test_mask=mask[:256], pad_id=0)


def make_run(dataset: str, device: str, variant: str, tmp_path) -> Run:
    backend = "triton" if variant.startswith("triton") else "torch"
    cfg = resolve(Config(dataset=dataset, frac=1.0, device=device, backend=backend, quiet=True,
                         out=str(tmp_path / f"{dataset}-{variant}")))
    n = 4096 if dataset == "modular" else 1024
    run = Run(cfg, log=lambda _: None, task=synthetic_task(dataset, n))
    run.model.readout_only = variant != "eager-full"
    return run


VARIANTS = ["eager-full", "eager-readout", "triton-readout"]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dataset", ["modular", "imdb"])
def test_train_step(benchmark, dataset, variant, device, tmp_path):
    if variant.startswith("triton") and device != "cuda":
        pytest.skip("the Triton backend needs CUDA")
    run = make_run(dataset, device, variant, tmp_path)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def step():
        run.train_step()
        sync()

    for _ in range(3):  # warm-up: allocator, autotuning, lazy init
        step()
    benchmark.group = f"train step {dataset} on {device}"
    benchmark.extra_info.update(device=torch.cuda.get_device_name() if device == "cuda" else "cpu",
                                torch=torch.__version__, threads=torch.get_num_threads())
    rounds = 20 if dataset == "modular" or device == "cuda" else 3
    benchmark.pedantic(step, rounds=rounds, iterations=1, warmup_rounds=1)
