"""The training step and the evaluation, captured once in CUDA graphs and replayed.

A step of these 1-layer models is a few hundred microseconds of GPU work or less, issued as dozens of
kernel launches of a few microseconds of CPU time each; replaying a captured graph issues them all with
one launch. What makes ``Run.train_step`` capturable was built before this module: the batch is drawn
on the device (``sampler.draw``), the metrics are summed on the device (``IntervalMeter``),
and ``kernels.FusedAdamW`` keeps its step counts and hyperparameters on the device. So a replay does
exactly what an eager step does, on the same tensors -- the trajectory is the same, which is why a run
may switch ``--cuda-graph`` on resume. (Same up to summation order where a kernel adds with atomics,
as the encoder's word-embedding gradient does, ``kernels/fused_embedding.py``: there two eager runs
may differ in rounding too.)

``GraphSteps`` runs the first ``WARMUP`` steps eagerly on a side stream (Triton compiles its kernels,
cuBLAS and autograd initialise lazily, nothing of which may happen during capture), then captures
``unroll`` consecutive steps as one graph (and one step as another, for the remainders) and replays
them. The loop never lets a replay cross a point where the host has work: an evaluation, a checkpoint,
the end of the run, or the start of a shuffled epoch (``sampler.prepare`` draws its permutation on
the host) -- it asks for at most ``limit`` steps, and a replay of ``unroll`` steps happens only when
``unroll <= limit``.

``GraphEval`` evaluates the test set by replaying one captured chunk of ``eval_batch_size`` examples
at a device-side offset; the rows of the last chunk past the end of the set are masked out of the sums,
which are read once per evaluation together with the weight norm. A test set that fits one chunk is
evaluated whole, with nothing to gather, offset or mask (the modular preset's 3,193 pairs). What a chunk computes is the run's
(``run.eval_chunk``, ``run.weight_norms``): one run's sums, or a pack's (R, ...) of them (``pack.py``).

Memory: all graphs share one private pool. That is safe because no tensor allocated during a capture
outlives it -- every result goes into a tensor allocated before capture (parameters, optimiser buffers,
meter and evaluation sums) -- and replays never overlap (one stream). The run owns its stepper and
evaluator, which refer back to it weakly: a finished run, its graphs and their pool are freed as soon as
the run is dropped (a sweep trains run after run in one process), not at some later cycle collection.
"""

from __future__ import annotations

import contextlib
import gc
import weakref

import torch

from .errors import UsageError

WARMUP = 3  # eager steps before capture (PyTorch's recipe; DDP-style lazy init needs up to 3)
MAX_UNROLL = 8  # steps per replay at most: past ~8 the launch cost is amortised and captures get slow


def resolve_mode(mode: str, device: torch.device, backend: str) -> str:
    """``--cuda-graph auto|on|off`` -> ``on`` or ``off`` for this device and backend (UsageError if impossible)."""
    if mode not in ("auto", "on", "off"):
        raise UsageError(f"--cuda-graph must be auto, on or off, got {mode!r}")
    if mode == "on":
        if device.type != "cuda":
            raise UsageError("--cuda-graph on needs a CUDA device, and this run is on the CPU; "
                             "use --cuda-graph off or auto")
        if backend != "triton":
            raise UsageError("--cuda-graph on needs --backend triton (its fused optimiser keeps every step's "
                             "state on the device); use --backend triton, or --cuda-graph off")
        return "on"
    if mode == "auto":
        return "on" if device.type == "cuda" and backend == "triton" else "off"
    return "off"


def choose_unroll(eval_every: int, max_unroll: int = MAX_UNROLL) -> int:
    """Steps per replay: the largest divisor of ``eval_every`` up to ``max_unroll``, so that every
    interval between evaluations is whole replays (other stops -- a shuffled epoch, the end of the
    run -- fall back to one-step replays there, never to an inexact step)."""
    if not isinstance(eval_every, int) or eval_every < 1:
        raise ValueError(f"eval_every must be a positive integer, got {eval_every!r}")
    if not isinstance(max_unroll, int) or max_unroll < 1:
        raise ValueError(f"max_unroll must be a positive integer, got {max_unroll!r}")
    return max(k for k in range(1, min(max_unroll, eval_every) + 1) if eval_every % k == 0)


def steps_this_replay(limit: int, unroll: int) -> int:
    """How many steps to replay when the loop allows ``limit``: ``unroll`` if it fits, else one."""
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    return unroll if unroll <= limit else 1


def _check_cuda(run) -> None:
    if run.device.type != "cuda" or not torch.cuda.is_available():
        raise UsageError("--cuda-graph on needs a CUDA device, and this run is on the CPU; use --cuda-graph off")


@contextlib.contextmanager
def _collector_paused():
    """Collect cycles now, then pause the collector. A collection inside a capture could destroy an
    unreachable graph of an earlier run, which CUDA forbids while a stream captures (the capture is then
    invalidated); torch >= 2.9 no longer collects before a capture (``force_cudagraph_gc``)."""
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _record(fn, pool, stream) -> "torch.cuda.CUDAGraph":
    """Capture what ``fn`` launches as a CUDA graph: its Python runs, its kernels are recorded, not run --
    the state moves only when the graph replays."""
    graph = torch.cuda.CUDAGraph()
    with _collector_paused(), torch.cuda.graph(graph, pool=pool, stream=stream):
        fn()
    return graph


class EagerSteps:
    """One ``run.train_step()`` per call, launched op by op."""

    unroll = 1

    def __init__(self, run):
        self.run = weakref.proxy(run)  # the run owns this (graph.py, Memory)

    def __call__(self, limit: int) -> int:
        self.run.train_step()
        return 1


class GraphSteps:
    """``run.train_step`` captured (``unroll`` steps per graph, and a one-step graph) and replayed.

    Call with the number of steps the loop allows before it must act on the host; returns how many
    steps were taken (one while warming up or when ``unroll`` does not fit, else ``unroll``).
    """

    def __init__(self, run, unroll: int | None = None, warmup: int = WARMUP):
        _check_cuda(run)
        self.run = weakref.proxy(run)
        self.unroll = choose_unroll(run.cfg.eval_every) if unroll is None else unroll
        if not isinstance(self.unroll, int) or self.unroll < 1:
            raise ValueError(f"unroll must be a positive integer, got {self.unroll!r}")
        self.warmup = warmup
        self._warm = 0
        self.stream = torch.cuda.Stream(run.device)  # warm-up and capture; replays go to the current stream
        self.pool = torch.cuda.graph_pool_handle()
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}

    def __call__(self, limit: int) -> int:
        if self._warm < self.warmup:
            self._warm += 1
            self._on_side_stream(self.run.train_step)
            return 1
        k = steps_this_replay(limit, self.unroll)
        graph = self.graphs.get(k)
        if graph is None:
            graph = self.graphs[k] = self._capture(k)
        graph.replay()
        return k

    def _on_side_stream(self, fn) -> None:
        main = torch.cuda.current_stream(self.run.device)
        self.stream.wait_stream(main)
        with torch.cuda.stream(self.stream):
            fn()
        main.wait_stream(self.stream)

    def _capture(self, k: int) -> "torch.cuda.CUDAGraph":
        def steps():
            for _ in range(k):
                self.run.train_step()

        return _record(steps, self.pool, self.stream)


class GraphEval:
    """The test set's (loss sum, correct count) and the weight norm from a captured chunked evaluation.

    ``__call__`` returns two device tensors, queued, valid until the next call (read them once): the float64
    ``[loss sum, correct, rows]`` -- (3,) for a run, (R, 3) for a pack -- and the fp32 weight norm, () or (R,).
    Two graphs: one chunk (``run.eval_chunk``, replayed ``chunks`` times at the offset ``start``), and a
    finish (the weight norms; past one chunk, the sums out and they and the offset reset for the next
    evaluation). A test set of one chunk is summed straight into the result, which its loss overwrites:
    nothing to copy or reset (the finish is the norm alone). The first call runs both eagerly (``eager()``,
    a warm-up: kernels compile at the chunk's shape), then captures. ``eager()`` alone runs on any device:
    the CPU tests check the chunking with it, and a pack on the CPU evaluates with it.
    """

    def __init__(self, run, pool=None):
        self.run = weakref.proxy(run)
        self.n = run.task.test_x.shape[0]
        self.chunk = min(run.cfg.eval_batch_size, self.n)
        self.chunks = -(-self.n // self.chunk)
        dev = run.device
        self.start = torch.zeros((), dtype=torch.long, device=dev)  # first row of the next chunk
        self.lanes = torch.arange(self.chunk, device=dev)
        self.ones = torch.ones(self.n, device=dev) if self.chunks == 1 else None
        # (..., 3): loss sum, correct, rows; (3,) for a run, (R, 3) for a pack. Past one chunk, each adds to sums.
        self.sums = torch.zeros(*run.runs_shape, 3, dtype=torch.float64, device=dev)
        self.result = torch.zeros_like(self.sums)
        self.norms = torch.zeros(run.runs_shape, device=dev)
        self.counter = torch.zeros(max(1, self.sums[..., 0].numel()), dtype=torch.int32, device=dev)  # the loss's
        self.pool = pool
        self.graphs: tuple | None = None

    def _chunk(self) -> None:
        if self.chunks == 1:  # the whole test set, every row weighed 1 (made once), its sums set in the result
            self.run.eval_chunk(None, self.ones, self.result, accumulate=False, counter=self.counter)
            return
        rows = self.start + self.lanes
        weight = (rows < self.n).float()  # the ragged tail re-reads the last row, weighed 0: out of the sums
        self.run.eval_chunk(rows.clamp_max(self.n - 1), weight, self.sums, counter=self.counter)
        self.start += self.chunk

    def _finish(self) -> None:
        if self.chunks > 1:
            self.result.copy_(self.sums)
            self.sums.zero_()
            self.start.zero_()
        self.run.weight_norms(out=self.norms)

    def _eager(self) -> None:
        for _ in range(self.chunks):
            self._chunk()
        self._finish()

    @torch.no_grad()
    def eager(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The same evaluation, launched op by op (no graph)."""
        with _eval_mode(self.run.model):
            self._eager()
        return self.result, self.norms

    @torch.no_grad()
    def __call__(self) -> tuple[torch.Tensor, torch.Tensor]:
        _check_cuda(self.run)
        with _eval_mode(self.run.model):
            if self.graphs is None:
                self._warm_up_and_capture()
            else:
                chunk, finish = self.graphs
                for _ in range(self.chunks):
                    chunk.replay()
                finish.replay()
        return self.result, self.norms

    def _warm_up_and_capture(self) -> None:
        main = torch.cuda.current_stream(self.run.device)
        side = torch.cuda.Stream(self.run.device)
        side.wait_stream(main)
        with torch.cuda.stream(side):
            self._eager()
        main.wait_stream(side)
        pool = torch.cuda.graph_pool_handle() if self.pool is None else self.pool
        # recorded, not run: the result stays as the warm-up left it
        self.graphs = (_record(self._chunk, pool, side), _record(self._finish, pool, side))


def test_rows(task, rows: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The test set's (x, y, mask) at ``rows`` (a device tensor of indices), or all of it for None."""
    if rows is None:
        return task.test_x, task.test_y, task.test_mask
    return task.test_x[rows], task.test_y[rows], None if task.test_mask is None else task.test_mask[rows]


class _eval_mode:
    """model.eval() inside, the previous mode restored after (the models have no dropout; kept for parity)."""

    def __init__(self, model):
        self.model = model

    def __enter__(self):
        self.was_training = self.model.training
        self.model.eval()

    def __exit__(self, *exc):
        self.model.train(self.was_training)


def eager_test_sums(run) -> tuple[torch.Tensor, torch.Tensor]:
    """The plain computation of an evaluation: the modules' forward in batches (``metrics.evaluate_sums``: no
    fused products, no chunk offsets) and a norm per parameter tensor (``metrics.weight_norm_tensor``, not the
    optimiser's flat buffer): float64 [loss sum, correct, rows] and the fp32 weight norm, on the device -- what
    ``GraphEval`` is checked against."""
    from .metrics import evaluate_sums, weight_norm_tensor

    task = run.task
    sums = evaluate_sums(run.model, task.test_x, task.test_y, task.test_mask, run.cfg.eval_batch_size, run.autocast)
    return torch.cat([sums, sums.new_tensor([task.test_x.shape[0]])]), weight_norm_tensor(run.model.parameters())
