"""The attention kernels compile without spills at every row stride they are launched with: the check
behind ``kernels.fused_attention._spec_rows``.

An even head's row strides (Q_ROW, KV_ROW) are constexprs: D for contiguous (B, H, L, D) tensors,
H * D for heads interleaved in a projection's rows. ``compile_specs`` ships each configuration at one
value (4 * BLOCK_D on both sides), so that the compile test does not grow threefold. This script
compiles every even-head spec at the other values a model or a caller launches -- contiguous on both
sides (BLOCK_D, BLOCK_D) and a readout row (BLOCK_D, 4 * BLOCK_D) -- and at the shipped value, for
sm_80 and sm_90, fails on any spill, and prints where registers or shared memory differ from the shipped
value's (a constant's value can change a few registers: ptxas folds some multiplications into shifts).

    python scripts/attention_rows_check.py [--arch 80|90] [--only NAME-SUBSTRING]   # minutes, CPU only
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)  # the kernels must be lowered, not interpreted
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def variants(spec):
    """The spec at each row-stride pair a launch may use, the shipped one first."""
    block_d = spec.constexprs["BLOCK_D"]
    for q_row, kv_row in [(4 * block_d, 4 * block_d), (block_d, block_d), (block_d, 4 * block_d)]:
        constexprs = dict(spec.constexprs, Q_ROW=q_row, KV_ROW=kv_row)
        yield (q_row, kv_row), dataclasses.replace(spec, constexprs=constexprs)


def main(argv: list[str] | None = None) -> int:
    from kernels import fused_attention
    from kernels._compile import ARCHS, compile_spec, problems

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, action="append", choices=ARCHS)
    parser.add_argument("--only", default="", help="the specs whose name contains this")
    args = parser.parse_args(argv)
    failed = checked = 0
    for spec in fused_attention.compile_specs():
        if not spec.constexprs["EVEN_D"] or args.only not in spec.name:
            continue  # a padded head's row strides are the runtime D (the constexprs are unused)
        for arch in args.arch or ARCHS:
            shipped = None
            for rows, variant in variants(spec):
                report = compile_spec(variant, arch)
                usage = (report.registers, report.shared_bytes, report.spill_bytes)
                shipped = shipped or usage
                bad = problems(report)
                failed += bool(bad)
                checked += 1
                if bad:
                    print(f"FAIL sm_{arch} {spec.name} rows={rows}: " + "; ".join(bad), flush=True)
                elif usage != shipped:
                    print(f"sm_{arch} {spec.name} rows={rows}: (registers, shared, spills) {usage}, "
                          f"shipped {shipped}", flush=True)
    print(f"{checked} compilations, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
