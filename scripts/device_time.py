"""A kernel's device time at small shapes, without the host's launch time: ``graph_time_us(fn)``.

``triton.testing.do_bench`` launches ``fn`` from Python again and again; where one launch takes the host
longer than the kernel takes the GPU (Triton 3.6's launcher: ~30-100 µs a call for ``kernels.matmul``'s
arguments), it times the host. On an H200 (2026-11-28) every matmul tile timed 28-120 µs that way, while the
step's CUDA-graph profile showed the same kernels at ~17 µs a call. Here ``fn``'s launches are captured into
a CUDA graph and the graph replayed, as the trainer runs them: the time per call is device time.
"""

from __future__ import annotations

import statistics
import sys

import torch


def graph_time_us(fn, calls: int = 20, replays: int = 10) -> float:
    """Median device µs per ``fn()`` call: ``calls`` calls captured in one CUDA graph, replayed ``replays`` times
    (after one warm-up call outside the capture, which compiles and allocates what it must)."""
    fn()
    try:
        return _replayed(fn, calls, replays)
    except RuntimeError as e:  # a call that cannot be captured: the host-bound figure, said to be one
        from triton.testing import do_bench

        print(f"graph_time_us: capture failed ({str(e).splitlines()[0] if str(e) else type(e).__name__}); "
              "timed from the host instead", file=sys.stderr)
        return 1e3 * do_bench(fn, return_mode="median")


def _replayed(fn, calls: int, replays: int) -> float:
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()  # a warm-up on the capture's stream
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(replays):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(1e3 * start.elapsed_time(end) / calls)
    return statistics.median(times)
