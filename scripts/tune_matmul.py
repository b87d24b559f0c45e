"""Times ``kernels.matmul``'s candidate tiles at the step's shapes on a GPU, so its tiles are measured, not guessed.

For every shape of ``benchmarks/test_matmul_bench.py`` (the modular k/v and FFN products, solo and as a
64-run pack, and the IMDB k/v projection) and every candidate (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages),
it compiles the candidate for this GPU's architecture (``kernels._compile``: registers and spills), and
times the spill-free ones inside a CUDA graph (``device_time.graph_time_us``: median device µs a call, not
the host's launch time; the forward ``x Wᵀ + b`` in fp32,
tf32x3). It prints one line per (shape, candidate), the shipped tiles marked, then the fastest spill-free
candidate per shape. Nothing is changed: the shipped tiles (``kernels/matmul.py``'s ``_TILES``) are chosen
by reading this table and rerunning the compile check under both Tritons.

    python scripts/tune_matmul.py [--mode tf32x3|tf32|16bit]

Without a CUDA device it says so in one line and exits 0 (the CPU rehearsal of scripts/gpu_check.sh).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks"), str(ROOT / "scripts")]

# (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages)
CANDIDATES = [(32, 32, 32, 4, 2), (32, 64, 32, 4, 2), (64, 32, 32, 4, 2), (64, 64, 32, 4, 2), (64, 64, 32, 8, 2),
              (64, 64, 16, 4, 3), (64, 128, 32, 8, 2), (128, 64, 32, 8, 2), (128, 128, 32, 8, 2), (128, 64, 16, 4, 3)]


def spec_for(mode: str, tiles: tuple[int, int, int, int, int]):
    """The shipped forward spec (bias, no GELU) of ``mode`` with the candidate's tiles."""
    mm = importlib.import_module("kernels.matmul")
    _, precision = mm._config(mode, 0)
    ty = "bf16" if mode == "16bit" else "fp32"
    (spec,) = [s for s in mm.compile_specs()
               if s.name == f"matmul[{ty},{precision},bias=fp32,act_out=0,act_in=0,adds=0,c={ty}]"]
    block_m, block_n, block_k, warps, stages = tiles
    return dataclasses.replace(spec, constexprs=dict(spec.constexprs, BLOCK_M=block_m, BLOCK_N=block_n,
                                                     BLOCK_K=block_k), num_warps=warps, num_stages=stages)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=["tf32x3", "tf32", "16bit"], default="tf32x3")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("tune_matmul: no CUDA device; nothing to time")
        return 0
    import triton
    from device_time import graph_time_us

    from kernels import _compile
    from test_matmul_bench import SHAPES

    mm = importlib.import_module("kernels.matmul")
    major, minor = torch.cuda.get_device_capability()
    arch = 10 * major + minor
    dtype = torch.bfloat16 if args.mode == "16bit" else torch.float32
    print(f"tune_matmul: {torch.cuda.get_device_name()} sm_{arch}, torch {torch.__version__}, triton "
          f"{triton.__version__}, mode {args.mode}; shipped {mm._TILES[args.mode]}")
    clean = []
    for tiles in CANDIDATES:
        report = _compile.compile_spec(spec_for(args.mode, tiles), arch)
        ok = not report.spill_bytes
        print(f"  tiles {tiles}: registers {report.registers}, spills {report.spill_bytes or 0} B"
              + ("" if ok else "  (not timed)"))
        if ok:
            clean.append(tiles)
    shipped = mm._TILES[args.mode]
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = args.mode == "tf32"
    try:
        for name, (runs, m, k, n) in SHAPES.items():
            lead = () if runs is None else (runs,)
            g = torch.Generator(device="cuda").manual_seed(0)
            x = torch.randn(*lead, m, k, device="cuda", generator=g).to(dtype)
            w = torch.randn(*lead, n, k, device="cuda", generator=g).to(dtype)
            b = torch.randn(*lead, n, device="cuda", generator=g)
            flop = 2 * (runs or 1) * m * k * n
            times = {}
            for tiles in clean:
                mm._TILES[args.mode] = tiles
                us = graph_time_us(lambda: mm.matmul(x, w.transpose(-1, -2), b))
                times[tiles] = us
                mark = "  (shipped)" if tiles == shipped else ""
                print(f"{name:20s} {str(tiles):24s} {us:9.1f} µs {flop / us / 1e6:7.1f} TFLOP/s{mark}")
            best = min(times, key=times.get)
            print(f"{name:20s} fastest {best}: {times[best]:.1f} µs, shipped {times.get(shipped, float('nan')):.1f} µs")
    finally:
        mm._TILES[args.mode] = shipped
        torch.backends.cuda.matmul.allow_tf32 = before
    return 0


if __name__ == "__main__":
    sys.exit(main())
