"""How many kernels one training step (or evaluation) launches, counted on the CPU along the CUDA path.

Inside a CUDA graph a step of these tiny models costs about its number of kernels times a few
microseconds (BENCHMARKS.md, the H200's modular step), so the count is the figure to bring down, and
it can be read without a GPU: every ATen op that computes (views and allocations excluded) and every
Triton kernel call is counted while one step runs on the CPU, the Triton kernels under the interpreter.
Two CPU-only branches are switched off so that the CPU walks the CUDA path: the table projection of the
decoder's first layer (``EmbeddingSum.worth_it``) and a pack's per-run products (``runs.one_launch``);
a pack is counted stacked, as CUDA runs it (with ``--backend torch`` its LayerNorms still take the
CPU's per-run path, ``runs.run_layer_norm``). The count is a proxy: one op may be several kernels
on CUDA (``embedding_dense_backward`` past 3,072 indices sorts and reduces in several, a reduction may
take two, a matrix product a second for split-K), and cuBLAS's choices are not visible here.

    python scripts/kernel_census.py [--dataset modular|imdb] [--backend triton|torch] [--runs R] [--eval]

``--eval`` counts one evaluation of the test set instead, as ``graph.GraphEval`` captures it (its chunks and
its finish): at one evaluation per 10 steps the modular preset's had been a third of a run's kernels.

IMDB runs at a reduced length (64 tokens, batch 8) to keep the interpreter quick; the count does not
depend on the sizes.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import sys
from pathlib import Path

os.environ.setdefault("TRITON_INTERPRET", "1")  # before any kernel is decorated

from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# ATen ops that neither compute nor move data on a GPU (views, metadata, allocation, record_function)
NOT_KERNELS = frozenset({
    "view", "_unsafe_view", "expand", "t", "transpose", "permute", "select", "slice", "unsqueeze", "squeeze",
    "as_strided", "detach", "alias", "reshape", "_reshape_alias", "unbind", "split", "split_with_sizes",
    "empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "lift_fresh", "set_",
    "_record_function_enter_new", "_record_function_exit",
})
# ATen ops that wait for the device (a value read to the host, or an output whose size depends on the data).
# A CUDA graph cannot capture them, and eagerly each stalls the launch queue: a step must run none. (On CPU
# tensors ``.tolist()``, ``.numpy()`` and ``.cpu()`` dispatch no op, so those syncs are invisible here.)
HOST_SYNCS = frozenset({"_local_scalar_dense", "is_nonzero", "item", "nonzero", "nonzero_static", "masked_select",
                        "equal", "_unique", "_unique2", "unique_dim", "unique_consecutive", "repeat_interleave"})


class _AtenOps(TorchDispatchMode):
    def __init__(self, counts: collections.Counter, paused: list[int]):
        super().__init__()
        self.counts, self.paused = counts, paused

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if not self.paused[0]:
            if name in HOST_SYNCS:
                self.counts["sync." + name] += 1
            elif name not in NOT_KERNELS:
                self.counts["aten." + name] += 1
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def counting() -> collections.Counter:
    """Count what runs inside: ``aten.<op>`` per computing ATen op, ``triton.<kernel>`` per Triton launch
    (the ATen ops the interpreter runs inside a kernel are not counted), and ``sync.<op>`` per op that would
    make the host wait for a GPU (``HOST_SYNCS``; not kernels, and not in ``kernels()``'s total)."""
    from triton.runtime import interpreter

    from kernels import fused_embedding

    counts: collections.Counter = collections.Counter()
    paused = [0]

    def uncounted(fn):
        """fn, with the ATen ops it runs left out of the count."""
        def call(*args, **kwargs):
            paused[0] += 1
            try:
                return fn(*args, **kwargs)
            finally:
                paused[0] -= 1
        return call

    run, check = interpreter.InterpretedFunction.run, fused_embedding._check

    def counted_run(self, *args, **kwargs):
        counts["triton." + self.fn.__name__] += 1
        return uncounted(run)(self, *args, **kwargs)

    interpreter.InterpretedFunction.run = counted_run
    # the embedding's range check of the ids runs on CPU tensors only (on CUDA it would cost a host sync)
    fused_embedding._check = uncounted(check)
    try:
        with _AtenOps(counts, paused):
            yield counts
    finally:
        interpreter.InterpretedFunction.run = run
        fused_embedding._check = check


@contextlib.contextmanager
def cuda_path():
    """The CPU-only branches off, so the CPU runs the step the way CUDA does."""
    from grokfast_train.models import runs
    from grokfast_train.models.embedding_sum import EmbeddingSum

    worth_it, one_launch = EmbeddingSum.__dict__["worth_it"], runs.one_launch
    EmbeddingSum.worth_it = staticmethod(lambda ids, tok: False)
    runs.one_launch = lambda x: True
    try:
        yield
    finally:
        EmbeddingSum.worth_it, runs.one_launch = worth_it, one_launch


def _task(dataset: str, vocab: int = 30522):
    if dataset != "imdb":
        return None
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from test_step_bench import synthetic_task

    t = synthetic_task("imdb", 64, vocab=vocab)
    L = 64
    # (contiguous, as a real task's are: the draw would copy strided rows first)
    t.train_x, t.train_mask, t.test_x, t.test_mask = (a[:, :L].contiguous() for a in (t.train_x, t.train_mask,
                                                                                     t.test_x, t.test_mask))
    return t


def step_census(dataset: str, backend: str, runs: int, out: str, vocab: int = 30522,
                **overrides) -> collections.Counter:
    """The ops of one training step (after one warm-up step) of the benchmark's shape; ``overrides``:
    Config fields to change and ``vocab`` IMDB's table size (a test's smaller model)."""
    run = _build(dataset, backend, runs, out, vocab, **overrides)
    with cuda_path():
        run.train_step()
        with counting() as counts:
            run.train_step()
    return counts


def _build(dataset: str, backend: str, runs: int, out: str, vocab: int, **overrides):
    """A run (or a stacked pack of ``runs``) of the benchmark's shape on the CPU."""
    from grokfast_train.config import Config, resolve
    from grokfast_train.pack import PackedRun
    from grokfast_train.train import Run

    kw = dict(frac=0.3, batch_size=512) if dataset == "modular" else dict(frac=1.0, batch_size=8, max_len=64)
    task = _task(dataset, vocab)
    kw.update(overrides)
    cfgs = [resolve(Config(dataset=dataset, steps=10 ** 9, device="cpu", backend=backend, quiet=True, force=True,
                           seed=i, out=f"{out}/run{i}", **kw)) for i in range(runs)]
    with cuda_path():
        if runs == 1:
            return Run(cfgs[0], log=lambda _: None, task=task)
        return PackedRun(cfgs, log=lambda _: None, run_logs=[lambda _: None] * runs, stacked=True,
                         tasks=None if task is None else [task] * runs)


def eval_census(dataset: str, backend: str, runs: int, out: str, vocab: int = 30522,
                **overrides) -> tuple[collections.Counter, int]:
    """The ops of one evaluation of the test set as ``graph.GraphEval`` captures it (its chunks and its
    finish, after one warm-up), and the number of chunks; arguments as ``step_census``."""
    from grokfast_train import graph

    run = _build(dataset, backend, runs, out, vocab, **overrides)
    with cuda_path():
        evaluation = graph.GraphEval(run)
        evaluation.eager()
        with counting() as counts:
            evaluation.eager()
    return counts, evaluation.chunks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=["modular", "imdb"], default="modular")
    parser.add_argument("--backend", choices=["triton", "torch"], default="triton")
    parser.add_argument("--runs", type=int, default=1, help="R > 1: a stacked pack of R runs")
    parser.add_argument("--eval", action="store_true", help="count one evaluation of the test set, not a step")
    parser.add_argument("--out", default="/tmp/kernel-census", help="scratch run directories")
    args = parser.parse_args(argv)
    if args.eval:
        counts, chunks = eval_census(args.dataset, args.backend, args.runs, args.out)
        what = f"per evaluation ({chunks} chunk{'s' if chunks > 1 else ''})"
    else:
        counts, what = step_census(args.dataset, args.backend, args.runs, args.out), "per step"
    syncs = {name: n for name, n in counts.items() if name.startswith("sync.")}
    print(f"{args.dataset}, backend {args.backend}, R = {args.runs}: {kernels(counts)} kernels {what}"
          + (f", and {sum(syncs.values())} host synchronisations (a CUDA graph cannot capture them)" if syncs else ""))
    for name, n in counts.most_common():
        print(f"{n:5d}  {name}")
    return 0


def kernels(counts: collections.Counter) -> int:
    """The number of kernels in a count (host synchronisations left out)."""
    return sum(n for name, n in counts.items() if not name.startswith("sync."))


if __name__ == "__main__":
    sys.exit(main())
