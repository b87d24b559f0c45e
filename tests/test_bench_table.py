"""scripts/bench_table.py: the floor model against DESIGN.md's figures, and the table from a JSON file."""

import importlib.util
import json
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("bench_table", Path(__file__).parents[1] / "scripts" / "bench_table.py")
bench_table = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_table)

IMDB = dict(kind="encoder", batch=128, positions=256, hidden=128, ffn=512, heads=4, layers=1, vocab=30522, classes=2,
            params=4_155_266)
MODULAR = dict(kind="decoder", batch=512, positions=6, hidden=128, ffn=512, heads=4, layers=1, vocab=117,
               classes=117, params=214_144)


def test_floor_model_matches_design_md():
    """DESIGN.md: the readout IMDB step is ~6.5 GFLOP and ~0.4 GB, a floor of ~0.15 ms on an H100."""
    assert bench_table.step_flops(IMDB) == pytest.approx(6.5e9, rel=0.05)
    assert 0.4e9 <= bench_table.step_bytes(IMDB, "fp32") <= 0.5e9
    assert bench_table.step_bytes(IMDB, "bf16") < bench_table.step_bytes(IMDB, "fp32")
    info = dict(shape=IMDB, device="NVIDIA H100 80GB HBM3", device_type="cuda", dtype="fp32")
    assert bench_table.floor_s(info) == pytest.approx(0.15e-3, rel=0.05)
    assert bench_table.floor_s(dict(info, device="NVIDIA H200")) < bench_table.floor_s(info)
    assert bench_table.floor_s(dict(info, device="cpu", device_type="cpu")) is None
    assert bench_table.floor_s(dict(info, shape=dict(IMDB, layers=2))) is None  # the model is for 1 layer


def _bench(row, median, dataset="modular", device="cpu", per_round=1, **info):
    shape = MODULAR if dataset == "modular" else IMDB
    return dict(name=row, stats=dict(median=median, rounds=3),
                extra_info=dict(row=row, dataset=dataset, device=device,
                                device_type="cuda" if "H100" in device else "cpu",
                                steps_per_round=per_round, shape=shape, dtype="fp32", torch="2.x", **info))


def test_table_ratios_and_floor(tmp_path, capsys):
    gpu = "NVIDIA H100 80GB HBM3"
    data = dict(datetime="2026-01-01", machine_info={}, benchmarks=[
        _bench("trainer-torch", 0.040, device=gpu, per_round=40),
        _bench("trainer-triton-graph", 0.004, device=gpu, per_round=40, unroll=5),
        _bench("paper-hf", 0.4, device=gpu, per_round=40),
        _bench("trainer-torch", 0.1, dataset="imdb"),
        dict(name="kernel", stats=dict(median=1.0, rounds=1), extra_info=dict(device="cpu")),  # not a step row
        dict(name="pack", stats=dict(median=1.0, rounds=1),  # a pack row: pack_table.py's, not this table's
             extra_info=dict(kind="pack", row="solo", runs=8, dataset="modular", device="cpu")),
    ])
    path = tmp_path / "b.json"
    path.write_text(json.dumps(data))
    assert bench_table.main([str(path)]) == 0
    out = capsys.readouterr().out
    graph_row = next(line for line in out.splitlines() if "trainer-triton-graph" in line)
    cells = [c.strip() for c in graph_row.strip("|").split("|")]
    # median step 100 us; 10x the torch row, 100x the paper loop; floor 12.2 us -> 12 %
    assert cells[5] == "100 µs" and cells[6] == "10,000.0" and cells[7] == "10.00×" and cells[8] == "100.00×"
    assert cells[-2] == "12.2 µs" and cells[-1] == "12%"
    imdb_row = next(line for line in out.splitlines() if "| imdb |" in line)
    assert imdb_row.rstrip().endswith("| n/a | n/a |")
    assert "solo" not in out  # the pack benchmark's rows left to pack_table.py
    assert bench_table.main([str(tmp_path / "missing.json")]) == 1


def test_a_killed_runs_empty_file_is_named_not_a_traceback(tmp_path, capsys):
    """gpu_check.sh's IMDB section was killed mid-compile on the H200: its JSON was empty, and the table
    of the other shape crashed on it. Now the table is printed and the empty file is named."""
    good = tmp_path / "modular.json"
    good.write_text(json.dumps(dict(datetime="2026-01-01", machine_info={},
                                    benchmarks=[_bench("trainer-torch", 0.040, per_round=1)])))
    empty, cut = tmp_path / "imdb.json", tmp_path / "cut.json"
    empty.write_text("")
    cut.write_text('{"benchmarks": [')
    assert bench_table.main([str(good), str(empty), str(cut), str(tmp_path / "absent.json")]) == 0
    out = capsys.readouterr().out
    assert "trainer-torch" in out
    assert f"{empty} (empty)" in out and f"{cut} (not valid JSON)" in out and "absent.json (absent)" in out
    assert bench_table.main([str(empty)]) == 1
