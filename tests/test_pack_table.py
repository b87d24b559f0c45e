"""scripts/pack_table.py: the pack-vs-solo table from a hand-made pytest-benchmark JSON file."""

import importlib.util
import json
from pathlib import Path

_spec = importlib.util.spec_from_file_location("pack_table", Path(__file__).parents[1] / "scripts" / "pack_table.py")
pack_table = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(pack_table)

GPU = "NVIDIA H100 80GB HBM3"


def _bench(row, runs, median, dataset="modular", device="cpu", per_round=1, **info):
    return dict(name=f"{dataset}-{runs}-{row}", stats=dict(median=median, rounds=5),
                extra_info=dict(kind="pack", row=row, runs=runs, dataset=dataset, device=device,
                                steps_per_round=per_round, run_steps_per_round=runs * per_round, torch="2.x",
                                triton="3.x", python="3.12", threads=1, **info))


def _cells(out: str, *start: str) -> list[str]:
    """The cells of the table line whose first cells are ``start``."""
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[:len(start)] == list(start):
            return cells
    raise AssertionError(f"no line starting {start} in:\n{out}")


def test_table_times_rates_and_ratio(tmp_path, capsys):
    data = dict(datetime="2026-01-01", machine_info={}, benchmarks=[
        # R = 8 on the GPU, rounds of 40 steps: pack 4 ms a round, solo 32 ms a round
        _bench("pack", 8, 0.004, device=GPU, per_round=40, unroll=5, backend="triton", cuda_graph="on",
               compute="stacked"),
        _bench("solo", 8, 0.032, device=GPU, per_round=40, unroll=5, backend="triton", cuda_graph="on"),
        _bench("pack-bf16", 8, 0.002, device=GPU, per_round=40, unroll=5, backend="triton", cuda_graph="on",
               compute="stacked, bf16"),  # against the same fp32 solo row: 16x
        # IMDB R = 8 on the CPU, one step a round: stacked, packing loses; run by run, it wins a little
        _bench("solo", 8, 0.25, dataset="imdb", unroll=1),
        _bench("pack-stacked", 8, 0.5, dataset="imdb", unroll=1, compute="stacked"),
        _bench("pack", 8, 0.2, dataset="imdb", unroll=1, compute="run by run"),
        _bench("pack", 1, 0.02, compute="run by run"),  # its solo row was never measured (a time cap)
        dict(name="step", stats=dict(median=1.0, rounds=1),  # a step benchmark: not this table's
             extra_info=dict(row="trainer-torch", dataset="modular", device="cpu", steps_per_round=1)),
    ])
    path = tmp_path / "b.json"
    path.write_text(json.dumps(data))
    assert pack_table.main([str(path)]) == 0
    out = capsys.readouterr().out
    assert f"- device {GPU}; torch 2.x, triton 3.x, Python 3.12, 1 intra-op threads; backend triton, cuda_graph on" in out
    assert "measured 2026-01-01" in out
    # pack step 4 ms / 40 = 100 us; 8 solo steps 32 ms / 40 = 800 us; run-steps/s 8 x 40 / 0.004 = 80,000 and
    # 8 x 40 / 0.032 = 10,000; pack / solo 8
    assert _cells(out, "modular", GPU, "8") == ["modular", GPU, "8", "5", "stacked", "100 µs", "800 µs", "80,000.0",
                                               "10,000.0", "8.00×"]
    # 500 ms and 250 ms a step; 8 / 0.5 = 16 and 8 / 0.25 = 32 run-steps/s; 16 / 32 = 0.5
    assert _cells(out, "imdb", "cpu", "8", "1", "stacked") == ["imdb", "cpu", "8", "1", "stacked", "500 ms", "250 ms",
                                                              "16.0", "32.0", "0.50×"]
    # run by run against the same solo row: 8 / 0.2 = 40 run-steps/s, 40 / 32 = 1.25
    assert _cells(out, "imdb", "cpu", "8", "1", "run by run") == ["imdb", "cpu", "8", "1", "run by run", "200 ms",
                                                                 "250 ms", "40.0", "32.0", "1.25×"]
    # a half not measured: blank, and no ratio
    assert _cells(out, "modular", "cpu", "1") == ["modular", "cpu", "1", "", "run by run", "20 ms", "", "50.0", "", ""]
    assert _cells(out, "modular", GPU, "8", "5", "stacked, bf16")[-1] == "16.00×"
    rows = [line for line in out.splitlines() if line.startswith("| ") and "dataset" not in line]
    assert len(rows) == 5  # the step benchmark left out
    # modular before imdb, the CPU before the GPU; the device's default way first
    assert [r.split("|")[1].strip() + "/" + r.split("|")[3].strip() + "/" + r.split("|")[5].strip() for r in rows] == [
        "modular/1/run by run", "modular/8/stacked", "modular/8/stacked, bf16", "imdb/8/run by run", "imdb/8/stacked"]


def test_no_pack_rows_is_an_error(tmp_path, capsys):
    path = tmp_path / "steps.json"
    path.write_text(json.dumps(dict(benchmarks=[dict(name="x", stats=dict(median=1.0), extra_info=dict(row="r"))])))
    assert pack_table.main([str(path)]) == 1
    assert pack_table.main([str(tmp_path / "missing.json")]) == 1
    assert "no pack benchmarks" in capsys.readouterr().err
