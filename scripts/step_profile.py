"""Where a training step's time goes on the GPU: kernels per step, their device time, the top kernels.

For each shape of the step benchmark (benchmarks/test_step_bench.py: modular batch 512, IMDB 128 x 256)
and each variant -- the trainer's Triton step launched op by op, the same step replayed from a CUDA
graph, the graph with every kernel launched with programmatic dependent launch (sm_90+; kernels/_pdl.py),
and (modular) the graph step with the decoder's first layer projected from its tables, which
the trainer does on the CPU only -- it prints
  - the step time without the profiler (median of 5 timed blocks of ``--steps`` steps, synchronised);
  - under torch.profiler: device events (kernels, copies, memsets) per step, their summed device time
    per step, and the top kernels by device time.
The gap between a step's time and its summed kernel time is what launching (eager) or the chain of
dependent kernels (graph) costs. ``--pack R``: the same for one stacked pack of R runs (benchmarks/
test_pack_bench.py's), graph, with and (modular) without the table projection -- where a pack's time
per run goes, and whether the projection's fewer FLOPs pay for its extra kernels there. On a CPU it
profiles the torch backend's CPU ops (a rehearsal of the script, not a measurement of anything GPU).

    python scripts/step_profile.py [--dataset modular imdb] [--steps 40] [--top 12] [--pack R]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

import test_step_bench as bench  # noqa: E402

from grokfast_train.models.embedding_sum import EmbeddingSum  # noqa: E402
from grokfast_train.pack import PackedRun  # noqa: E402
from grokfast_train.train import Run  # noqa: E402
import kernels  # noqa: E402


@contextlib.contextmanager
def table_projection():
    """The decoder's first layer projected from its (token, position) tables on any device."""
    worth_it = EmbeddingSum.__dict__["worth_it"]
    EmbeddingSum.worth_it = staticmethod(lambda ids, tok: ids.dim() >= 2 and tok.shape[-2] < ids.shape[-2])
    try:
        yield
    finally:
        EmbeddingSum.worth_it = worth_it


@contextlib.contextmanager
def pdl(on: bool):
    """Every kernel launched (and captured) with programmatic dependent launch, or none (whatever
    GROKFAST_PDL says: the variants compare the two)."""
    previous = kernels.set_pdl(on)
    try:
        yield
    finally:
        kernels.set_pdl(previous)


def build(dataset: str, device: str, out: Path, variant: str, runs: int = 0) -> Run | PackedRun:
    """The benchmark's run (``runs`` 0) or its stacked pack of ``runs`` runs, each with its own seed."""
    cuda = device == "cuda"
    kw = dict(backend="triton" if cuda else "torch", cuda_graph="on" if cuda and "eager" not in variant else "off")
    if runs:
        cfgs = [bench._config(dataset, device, out / f"p{i}", seed=i, **kw) for i in range(runs)]
        return PackedRun(cfgs, log=lambda _: None, run_logs=[lambda _: None] * runs,
                         tasks=[bench._task(dataset, c) for c in cfgs], stacked=True)
    cfg = bench._config(dataset, device, out, **kw)
    run = Run(cfg, log=lambda _: None, task=bench._task(dataset, cfg))
    run.model.readout_only = True
    return run


def take(run: Run, steps: int, sync) -> None:
    done = 0
    while done < steps:
        done += run.advance(steps - done)
    sync()


def step_time(run: Run, steps: int, sync, blocks: int = 5) -> float:
    times = []
    for _ in range(blocks):
        t0 = time.perf_counter()
        take(run, steps, sync)
        times.append((time.perf_counter() - t0) / steps)
    return statistics.median(times)


def fmt_us(seconds_or_us: float, unit: str = "s") -> str:
    us = seconds_or_us * 1e6 if unit == "s" else seconds_or_us
    return f"{us / 1e3:,.2f} ms" if us >= 1e3 else f"{us:,.1f} µs"


def report(prof, steps: int, top: int, cuda: bool) -> None:
    from torch.autograd import DeviceType

    if not cuda:
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top))
        return
    events = [e for e in prof.events() if e.device_type == DeviceType.CUDA]
    if not events:
        print("  no device events recorded (the profiler saw no kernels here)")
        return
    by_name: dict[str, list[float]] = {}
    for e in events:
        by_name.setdefault(e.name, []).append(e.time_range.elapsed_us())
    busy = sum(sum(v) for v in by_name.values())
    print(f"  device events per step: {len(events) / steps:.1f}; their summed device time per step: "
          f"{fmt_us(busy / steps, 'us')}")
    rows = sorted(by_name.items(), key=lambda kv: -sum(kv[1]))[:top]
    print(f"  {'µs/step':>9} {'share':>6} {'calls/step':>10} {'µs/call':>8}  kernel")
    for name, durs in rows:
        total = sum(durs)
        print(f"  {total / steps:9.1f} {total / busy:6.1%} {len(durs) / steps:10.1f} {total / len(durs):8.2f}  "
              f"{name[:90]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", nargs="+", choices=bench.DATASETS, default=bench.DATASETS)
    parser.add_argument("--steps", type=int, default=40, help="steps per timed block and profiled")
    parser.add_argument("--top", type=int, default=12, help="kernels listed per variant")
    parser.add_argument("--pack", type=int, default=0, metavar="R", help="profile a stacked pack of R runs instead")
    parser.add_argument("--only", nargs="+", metavar="VARIANT", choices=("eager", "graph", "graph + PDL",
                                                                         "graph + table projection"),
                        help="profile these variants alone (a short device call)")
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    name = torch.cuda.get_device_name() if cuda else "CPU (rehearsal: torch backend, CPU ops)"
    print(f"step profile on {name}; torch {torch.__version__}; {args.steps} steps per block")
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
    for dataset in args.dataset:
        variants = ["eager", "graph", "graph + PDL", "graph + table projection"] if cuda else ["eager"]
        if cuda and torch.cuda.get_device_capability()[0] < 9:
            variants.remove("graph + PDL")  # (programmatic dependent launch needs sm_90)
        if args.pack:
            variants = [f"pack of {args.pack}, {v}" for v in (variants[1:] if cuda else variants)]
        if dataset != "modular":
            variants = [v for v in variants if "table" not in v]
        if args.only:
            variants = [v for v in variants if v.split(", ")[-1] in args.only]
        for variant in variants:
            try:
                profile(dataset, device, variant, args, activities, sync, cuda)
            except Exception as e:  # a variant that fails (never run on a GPU before) must not stop the others
                print(f"\n{dataset}, {variant}: failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    return 0


def profile(dataset: str, device: str, variant: str, args, activities, sync, cuda: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp, \
            (table_projection() if "table" in variant else contextlib.nullcontext()), pdl("PDL" in variant):
        run = build(dataset, device, Path(tmp), variant, args.pack)
        take(run, 2 * args.steps, sync)  # warm-up: compilation, capture, allocator
        t = step_time(run, args.steps, sync)
        runs = len(run.members) if isinstance(run, PackedRun) else 0
        per_run = f", {runs} runs: {fmt_us(t / runs)} per run-step" if runs else ""
        print(f"\n{dataset}, {variant}: {fmt_us(t)} per step{per_run} ({run.cfg.backend}, "
              f"graph {run.cfg.cuda_graph}, K {run.stepper.unroll})")
        with torch.profiler.profile(activities=activities) as prof:
            take(run, args.steps, sync)
        report(prof, args.steps, args.top, cuda)


if __name__ == "__main__":
    sys.exit(main())
