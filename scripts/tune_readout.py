"""Times ``kernels.readout_attention``'s candidate tiles at IMDB's shape on a GPU, so its tiles are measured, not guessed.

At the paper's IMDB readout layer (128 sequences x 256 keys, width 128, 4 heads, IMDB-like padding) and at a pack
of 8 such runs, for each direction (forward; backward) and each candidate (BLOCK_L, warps), it compiles the
candidate for this GPU's architecture (``kernels._compile``: registers and spills) and times the spill-free ones
inside a CUDA graph (``device_time.graph_time_us``: median device µs a call, not the host's launch time). One
line per (shape, direction, candidate), the shipped tiles marked, then the fastest per shape and direction. Nothing is changed: the shipped tiles (``_TILES``) are chosen by reading
this table and rerunning the compile check under both Tritons.

    python scripts/tune_readout.py

Without a CUDA device it says so in one line and exits 0 (the CPU rehearsal of scripts/gpu_check.sh).
"""

from __future__ import annotations

import dataclasses
import importlib
import sys
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

CANDIDATES = [(16, 4), (16, 8), (32, 4), (32, 8), (64, 4), (64, 8)]  # (BLOCK_L, warps)
WIDTH, HEADS, KEYS = 128, 4, 256
SHAPES = {"imdb": (128, None), "imdb pack of 8": (8 * 128, 8)}  # name -> (sequences, runs)


def spec_for(direction: str, tiles: tuple[int, int]):
    """The shipped spec of ``direction`` ("fwd" | "bwd") at IMDB's width, with the candidate's tiles."""
    ra = importlib.import_module("kernels.readout_attention")
    (spec,) = [s for s in ra.compile_specs() if s.name == f"readout_attention_{direction}[BLOCK_C={WIDTH}]"]
    block_l, warps = tiles
    return dataclasses.replace(spec, constexprs=dict(spec.constexprs, BLOCK_L=block_l), num_warps=warps)


def _inputs(n: int, runs: int | None):
    g = torch.Generator(device="cuda").manual_seed(0)
    lead = () if runs is None else (runs,)
    x = torch.randn(n, KEYS, WIDTH, device="cuda", generator=g)
    w = [torch.randn(*lead, WIDTH, WIDTH, device="cuda", generator=g) * WIDTH ** -0.5 if i % 2 == 0 else
         torch.randn(*lead, WIDTH, device="cuda", generator=g) * 0.1 for i in range(6)]
    lengths = torch.randint(32, KEYS + 1, (n,), device="cuda", generator=g)
    mask = torch.arange(KEYS, device="cuda")[None, :] < lengths[:, None]
    return x, w, mask, torch.randn(n, WIDTH, device="cuda", generator=g)


def main(argv: list[str] | None = None) -> int:
    if not torch.cuda.is_available():
        print("tune_readout: no CUDA device; nothing to time")
        return 0
    import triton
    from device_time import graph_time_us

    from kernels import _compile

    ra = importlib.import_module("kernels.readout_attention")
    major, minor = torch.cuda.get_device_capability()
    arch = 10 * major + minor
    print(f"tune_readout: {torch.cuda.get_device_name()} sm_{arch}, torch {torch.__version__}, triton "
          f"{triton.__version__}; shipped fwd {ra._TILES['fwd'][WIDTH]}, bwd {ra._TILES['bwd'][WIDTH]}")
    clean = {}
    for direction in ("fwd", "bwd"):
        clean[direction] = []
        for tiles in CANDIDATES:
            report = _compile.compile_spec(spec_for(direction, tiles), arch)
            ok = not report.spill_bytes
            print(f"  {direction} tiles {tiles}: registers {report.registers}, spills {report.spill_bytes or 0} B"
                  + ("" if ok else "  (not timed)"))
            if ok:
                clean[direction].append(tiles)
    shipped = {d: ra._TILES[d][WIDTH] for d in ("fwd", "bwd")}
    try:
        for name, (n, runs) in SHAPES.items():
            x, w, mask, dout = _inputs(n, runs)
            saved = ra.readout_attention_forward(x, 0, *w, HEADS, mask)
            calls = {"fwd": lambda: ra.readout_attention_forward(x, 0, *w, HEADS, mask),
                     "bwd": lambda: ra.readout_attention_backward(dout, dout, x, 0, saved, w[0], w[2], w[3], w[4],
                                                                  HEADS, mask)}
            for direction, call in calls.items():
                times = {}
                for tiles in clean[direction]:
                    ra._TILES[direction][WIDTH] = tiles
                    times[tiles] = graph_time_us(call)
                    mark = "  (shipped)" if tiles == shipped[direction] else ""
                    print(f"{name:16s} {direction} {str(tiles):9s} {times[tiles]:8.1f} µs{mark}")
                ra._TILES[direction][WIDTH] = shipped[direction]
                if times:
                    best = min(times, key=times.get)
                    print(f"{name:16s} {direction} fastest {best}: {times[best]:.1f} µs, shipped "
                          f"{times.get(shipped[direction], float('nan')):.1f} µs")
    finally:
        for direction, tiles in shipped.items():
            ra._TILES[direction][WIDTH] = tiles
    return 0


if __name__ == "__main__":
    sys.exit(main())
