#!/usr/bin/env python3
"""pytest-benchmark JSON of benchmarks/test_pack_bench.py -> one markdown table.

Usage: python3 scripts/pack_table.py BENCH.json [MORE.json ...] > table.md

One line per (dataset, device, R) and way the pack computed (``stacked``: one model whose every op
serves all R runs; ``run by run``: each run's forward and backward in turn, one optimiser step -- the
CPU's default; a CPU benchmark measures both): the median time of one pack step (R run-steps) and of R
solo steps (one step of each of R ordinary runs, one after another), the run-steps per second
of each (R x steps per round / the median round), and pack / solo = the pack's run-steps/s over the solo
runs' (> 1: packing wins). A round is ``steps_per_round`` steps of the row ended by one synchronisation;
a half whose row was not measured (a time cap, a failure) is left blank. Only the standard library is used.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_table beside this script, however it is loaded
from bench_table import fmt_time, print_sources, readable  # noqa: E402

DATASETS = ["modular", "imdb"]
PACK_ROWS = ("pack", "pack-stacked", "pack-bf16", "pack-pdl")  # the device's default way, (CPU) the stacked model,
# (CUDA) bf16, (CUDA) every kernel launched with programmatic dependent launch


def load(paths: list[Path]) -> tuple[dict[tuple, dict], list[dict]]:
    """{(dataset, device, R): {"pack": entry, "pack-stacked": entry, "solo": entry}}, and one header per file. An entry holds the
    row's extra_info, its median round, the step time (median / steps per round) and its run-steps/s."""
    groups: dict[tuple, dict] = {}
    headers = []
    for path in paths:
        data = json.loads(path.read_text())
        headers.append(dict(file=str(path), datetime=data.get("datetime"), machine=data.get("machine_info", {})))
        for b in data.get("benchmarks", []):
            info = b.get("extra_info", {})
            if info.get("kind") != "pack" or info.get("row") not in PACK_ROWS + ("solo",):
                continue  # a step or kernel benchmark: not this table's
            runs, per = int(info["runs"]), int(info.get("steps_per_round", 1))
            median = float(b["stats"]["median"])
            key = (info["dataset"], info["device"], runs)
            groups.setdefault(key, {})[info["row"]] = dict(
                info=info, median=median, step_s=median / per, run_steps_per_s=runs * per / median,
                rounds=b["stats"].get("rounds"))
    return groups, headers


def _order(key: tuple) -> tuple:
    dataset, device, runs = key
    return (DATASETS.index(dataset) if dataset in DATASETS else len(DATASETS), dataset, device != "cpu", device, runs)


def table(groups: dict[tuple, dict]) -> str:
    head = ["dataset", "device", "R", "K", "pack computes", "pack step", "R solo steps", "pack run-steps/s",
            "solo run-steps/s", "pack / solo"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * 2 + ["---"] + ["---:"] * 5) + "|"]
    for key in sorted(groups, key=_order):
        dataset, device, runs = key
        solo = groups[key].get("solo")
        packs = [groups[key][row] for row in PACK_ROWS if row in groups[key]] or [None]
        for pack in packs:  # one line per way the pack computed, each against the same solo runs
            unroll = next((e["info"].get("unroll") for e in (pack, solo) if e is not None), None)
            ratio = "" if pack is None or solo is None else f"{pack['run_steps_per_s'] / solo['run_steps_per_s']:.2f}×"
            cells = [dataset, device, str(runs), "" if unroll is None else str(unroll),
                     "" if pack is None else pack["info"].get("compute", ""),
                     "" if pack is None else fmt_time(pack["step_s"]), "" if solo is None else fmt_time(solo["step_s"]),
                     "" if pack is None else f"{pack['run_steps_per_s']:,.1f}",
                     "" if solo is None else f"{solo['run_steps_per_s']:,.1f}", ratio]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("json", nargs="+", type=Path, help="pytest-benchmark --benchmark-json output(s)")
    args = ap.parse_args(argv)
    present, missing = readable(args.json)
    groups, headers = load(present)
    if not groups:
        print(f"pack_table: no pack benchmarks in {', '.join(map(str, args.json))}", file=sys.stderr)
        return 1
    entries = [e for g in groups.values() for e in g.values()]
    versions = sorted({(e["info"].get("device"), e["info"].get("torch"), e["info"].get("triton"),
                        e["info"].get("python"), e["info"].get("threads"), e["info"].get("backend"),
                        e["info"].get("cuda_graph")) for e in entries}, key=str)
    for dev, tv, trv, py, th, backend, graph in versions:
        print(f"- device {dev}; torch {tv}, triton {trv}, Python {py}, {th} intra-op threads; "
              f"backend {backend}, cuda_graph {graph}")
    print_sources(headers, missing)
    print("- pack computes: stacked = one model whose every op serves all R runs; run by run = each run's forward "
          "and backward in turn through a solo model bound to the pack's weights, each run's update straight after its backward; "
          "bf16 = under --dtype bf16, against the same fp32 solo runs; PDL = every kernel launched with programmatic "
          "dependent launch, against the same solo runs launched without it")
    print("- pack step = one step of R packed runs; R solo steps = one step of each of R runs in turn (each the "
          "median round / steps per round); run-steps/s = R x steps per round / median round; K = steps per "
          "graph replay; pack / solo = pack run-steps/s / solo run-steps/s (> 1: packing wins)")
    print()
    print(table(groups))
    return 0


if __name__ == "__main__":
    sys.exit(main())
