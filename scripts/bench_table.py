#!/usr/bin/env python3
"""pytest-benchmark JSON of benchmarks/test_step_bench.py -> one markdown table.

Usage: python3 scripts/bench_table.py BENCH.json [MORE.json ...] > table.md

Per row (one shape on one device): median time of one training step (a round's median divided by its
steps), steps/s, the speed-up over each peer measured in the same group (peer time / row time: > 1 means
this row is faster), and the fraction of the physical floor reached (floor / median).

The floor is docs/DESIGN.md's performance model: the step's FLOPs and its minimum DRAM bytes against the
device's peaks, whichever takes longer. Peaks (docs/DESIGN.md, "The lent GPU machines" and "Performance
model"): H100 3.0 TB/s, H200 4.3 TB/s; 400 TFLOP/s for fp32 rows (tf32 tensor cores), 790 TFLOP/s for
bf16. A CPU has no stated peak here, so its floor column says n/a. Only the standard library is used.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# substring of torch.cuda.get_device_name() -> (bytes/s, FLOP/s fp32 via tf32, FLOP/s bf16)
PEAKS = [("H200", (4.3e12, 400e12, 790e12)), ("H100", (3.0e12, 400e12, 790e12))]
PEERS = ["trainer-torch", "compile-default", "compile-max-autotune-no-cudagraphs", "compile-reduce-overhead",
         "paper-hf"]
ORDER = ["trainer-triton-graph", "trainer-triton-graph-pdl", "trainer-triton-graph-k1", "trainer-triton-graph-bf16",
         "trainer-triton", "trainer-torch", "trainer-torch-full", "compile-default", "compile-max-autotune-no-cudagraphs",
         "compile-reduce-overhead", "paper-hf"]


def step_flops(s: dict) -> float:
    """Training FLOPs (3 x forward matmul FLOPs) of a 1-layer model whose layer computes keys and values at
    every position and everything else at the one position the loss reads (docs/DESIGN.md)."""
    B, P, h, f = s["batch"], s["positions"], s["hidden"], s["ffn"]
    T = B * P
    fwd = 2 * 2 * T * h * h  # K and V projections, every position
    fwd += 2 * 2 * B * h * h  # Q and O at the read position
    fwd += 2 * 2 * B * P * h  # one query's scores and weighted sum
    fwd += 2 * 2 * B * h * f  # FFN at the read position
    if s["kind"] == "encoder":
        fwd += 2 * B * h * h + 2 * B * h * s["classes"]  # pooler, classifier
    else:
        fwd += 2 * B * h * s["vocab"]  # tied LM head
    return 3.0 * fwd


def step_bytes(s: dict, dtype: str) -> float:
    """Minimum DRAM bytes of the same step: U = tokens x hidden elements per activation; activations of the
    matrix products and attention in the compute dtype (a bytes), the embedding and its gradient fp32.
    embedding fwd (read rows, write out) 8U; K/V projection fwd (read x, write K, V) 3aU; attention fwd
    (read K, V) 2aU; attention bwd (read K, V, write dK, dV) 4aU; K/V projection bwd (read dK, dV, x;
    write dx fp32) 3aU + 4U; embedding bwd (read dx and the rows, add into the word gradient) 16U;
    AdamW 28 B/param + the gradient memset 4 B/param."""
    a = 2 if dtype == "bf16" else 4
    U = s["batch"] * s["positions"] * s["hidden"]
    act = 8 * U + 3 * a * U + 2 * a * U + 4 * a * U + 3 * a * U + 4 * U + 16 * U
    return act + 32.0 * s["params"]


def floor_s(info: dict) -> float | None:
    s = info.get("shape")
    if info.get("device_type") != "cuda" or not s or s.get("layers") != 1:
        return None
    for key, (bw, fp32, bf16) in PEAKS:
        if key in info.get("device", ""):
            dtype = info.get("dtype", "fp32")
            return max(step_flops(s) / (bf16 if dtype == "bf16" else fp32), step_bytes(s, dtype) / bw)
    return None


def fmt_time(t: float) -> str:
    if t >= 1e-1:
        return f"{t * 1e3:,.0f} ms"
    if t >= 1e-3:
        return f"{t * 1e3:.3g} ms"
    return f"{t * 1e6:.3g} µs"


def _fmt_share(x: float) -> str:
    return f"{x:.0%}" if x >= 0.1 else f"{x * 100:.2g}%"


def load(paths: list[Path]) -> tuple[list[dict], list[dict]]:
    rows, headers = [], []
    for path in paths:
        data = json.loads(path.read_text())
        headers.append(dict(file=str(path), datetime=data.get("datetime"), machine=data.get("machine_info", {})))
        for b in data.get("benchmarks", []):
            info = b.get("extra_info", {})
            if "row" not in info or info.get("kind") == "pack":  # a kernel benchmark, or pack_table.py's rows
                continue
            per = info.get("steps_per_round", 1)
            rows.append(dict(info=info, step_s=b["stats"]["median"] / per, rounds=b["stats"]["rounds"],
                             group=(info["dataset"], info["device"])))
    return rows, headers


def table(rows: list[dict]) -> str:
    peers = [p for p in PEERS if any(r["info"]["row"] == p for r in rows)]
    head = ["shape", "device", "row", "dtype", "K", "median step", "steps/s", *[f"× {p}" for p in peers],
            "floor", "of floor"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 4 + ["---:"] * (len(head) - 4)) + "|"]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["group"], []).append(r)
    for (dataset, device), members in sorted(groups.items()):
        by_row = {r["info"]["row"]: r for r in members}
        members.sort(key=lambda r: ORDER.index(r["info"]["row"]) if r["info"]["row"] in ORDER else len(ORDER))
        for r in members:
            info, t = r["info"], r["step_s"]
            ratios = []
            for p in peers:
                peer = by_row.get(p)
                ratios.append("" if peer is None or p == info["row"] else f"{peer['step_s'] / t:.2f}×")
            fl = floor_s(info)
            unroll = info.get("unroll")
            cells = [dataset, device, info["row"], info.get("dtype", "fp32"), "" if unroll is None else str(unroll),
                     fmt_time(t), f"{1 / t:,.1f}", *ratios,
                     "n/a" if fl is None else fmt_time(fl), "n/a" if fl is None else _fmt_share(fl / t)]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def print_sources(headers: list[dict], missing: list[str]) -> None:
    """One line per JSON file (when and on what it was measured), and the files that were not there."""
    for h in headers:
        cpu = h["machine"].get("cpu", {}).get("brand_raw")
        print(f"- {h['file']}: measured {h['datetime']}" + (f" on {cpu}" if cpu else ""))
    if missing:
        print(f"- not read (not run, or killed before it wrote its file): {', '.join(missing)}")


def readable(paths: list[Path]) -> tuple[list[Path], list[str]]:
    """The JSON files that can be read, and a note for each that cannot: absent (not run), or empty or
    cut short (pytest-benchmark writes its file only as the session ends, so a killed run leaves it so)."""
    ok, missing = [], []
    for p in paths:
        if not p.is_file():
            missing.append(f"{p} (absent)")
            continue
        try:
            json.loads(p.read_text())
        except ValueError:
            missing.append(f"{p} ({'empty' if p.stat().st_size == 0 else 'not valid JSON'})")
            continue
        ok.append(p)
    return ok, missing


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("json", nargs="+", type=Path, help="pytest-benchmark --benchmark-json output(s)")
    args = ap.parse_args(argv)
    present, missing = readable(args.json)
    rows, headers = load(present)
    if not rows:
        print(f"bench_table: no training-step benchmarks in {', '.join(map(str, args.json))}", file=sys.stderr)
        return 1
    versions = sorted({(r["info"].get("device"), r["info"].get("torch"), r["info"].get("triton"),
                        r["info"].get("transformers"), r["info"].get("python"), r["info"].get("threads"))
                       for r in rows}, key=str)
    for dev, tv, trv, hf, py, th in versions:
        print(f"- device {dev}; torch {tv}, triton {trv}, transformers {hf}, Python {py}, {th} intra-op threads")
    print_sources(headers, missing)
    print("- median step = the median round / steps per round; × peer = the peer's step time / this row's "
          "(> 1: this row is faster); floor = docs/DESIGN.md's model (scripts/bench_table.py), n/a on a CPU")
    print()
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
