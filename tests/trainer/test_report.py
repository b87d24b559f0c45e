"""``grokfast-train report`` on synthetic run directories whose landmarks and critical size are known."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from grokfast_train.report import main

SIZES = (500, 1000, 1500, 2000)
MEM = 100  # every run memorises at step 100
# Generalisation step (None: never) per (hidden, seed) and data size. Hidden 64: seed 0 from 1,000 on,
# seed 1 from 1,500 on (critical size 1,250, spread 1,000-1,500); hidden 128: both from 1,500 on.
GEN = {
    (64, 0): {500: None, 1000: 1300, 1500: 700, 2000: 150},
    (64, 1): {500: None, 1000: None, 1500: 1100, 2000: 200},
    (128, 0): {500: None, 1000: None, 1500: 1500, 2000: 400},
    (128, 1): {500: None, 1000: None, 1500: 1400, 2000: 300},
}


def make_run(run_dir: Path, size: int, seed: int, hidden: int, gen: int | None, steps: int = 2000,
             eval_every: int = 10, finished: bool = True, **config) -> None:
    """A run directory as train.py writes it: step-function accuracies with the given landmarks."""
    run_dir.mkdir(parents=True)
    cfg = dict(dataset="modular", frac=None, train_size=size, hidden=hidden, n_layers=1, heads=4, ffn=4 * hidden,
               seed=seed, lr=1e-3, weight_decay=1.0, grokfast_alpha=None, gen_threshold=0.95,
               mem_threshold=0.99, eval_every=eval_every, steps=steps, batch_size="full",
               out=str(run_dir), device="cpu", backend="torch") | config
    (run_dir / "config.json").write_text(json.dumps(cfg))
    rows = []
    for step in range(eval_every, steps + 1, eval_every):
        test = 1.0 if gen is not None and step >= gen else 0.0  # smoothed, 0.5 falls at the jump
        rows.append({"step": step, "train_acc": 1.0 if step >= MEM else 0.3, "train_loss": 0.1,
                     "test_acc": test, "test_loss": 1.0, "weight_norm": 40.0 - step / 100, "elapsed_s": step / 100})
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if finished:
        summary = {"memorization_step": MEM, "generalization_step": gen,
                   "grokking_delay": None if gen is None else gen - MEM, "best_test_acc": max(r["test_acc"] for r in rows),
                   "final_test_acc": rows[-1]["test_acc"], "train_size": size, "data": "synthetic", "steps_per_s": 1.0}
        (run_dir / "summary.json").write_text(json.dumps(summary))


@pytest.fixture
def sweep(tmp_path) -> Path:
    root = tmp_path / "sweep"
    for (hidden, seed), gens in GEN.items():
        for size, gen in gens.items():
            make_run(root / f"h{hidden}-n{size}-seed{seed}", size, seed, hidden, gen)
    (root / "sweep.json").write_text(json.dumps({"runs": [f"run{i}" for i in range(16)]}))
    return root


@pytest.fixture
def no_matplotlib(monkeypatch):
    """Tables only: the tests of numbers skip drawing (import matplotlib -> ImportError)."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)


def read_report(root: Path) -> dict:
    return json.loads((root / "report.json").read_text())


def test_sweep_report_classifies_and_locates_the_critical_size(sweep, capsys, no_matplotlib):
    assert main([str(sweep)]) == 0
    assert "16 of 16 runs finished" in capsys.readouterr().out
    report = read_report(sweep)
    runs = report["runs"]
    assert len(runs) == 16
    for r in runs:
        assert {"train_size", "frac", "hidden", "layers", "seed", "regime", "memorization_step",
                "generalization_step", "delay", "best_test_acc", "final_test_acc", "run"} <= set(r)
        assert r["generalization_step"] == GEN[(r["hidden"], r["seed"])][r["train_size"]]
        assert r["memorization_step"] == MEM and r["layers"] == 1
    regimes = {(r["hidden"], r["seed"], r["train_size"]): r["regime"] for r in runs}
    assert all(regimes[(h, s, 500)] == "insufficiency" for h, s in GEN)
    assert all(regimes[(h, s, 2000)] != "insufficiency" for h, s in GEN)
    assert regimes[(64, 0, 2000)] == "surplus" and regimes[(64, 0, 1000)] == "sufficiency"

    cds = report["critical_data_size"]
    assert list(cds) == ["hidden=64,layers=1", "hidden=128,layers=1"]
    small, large = cds["hidden=64,layers=1"], cds["hidden=128,layers=1"]
    assert (small["estimate"], small["low"], small["high"], small["seeds_disagree"]) == (1250, 1000, 1500, True)
    assert (large["estimate"], large["low"], large["high"], large["seeds_disagree"]) == (1500, 1500, 1500, False)
    assert 500 < small["estimate"] < 2000 and "median over seeds" in small["rule"]
    assert small["peak_size"] == 1500 and large["peak_size"] == 1500
    # The paper's highest points: 0.5 is reached at the jump, so it peaks where generalising took longest.
    peaks = report["steps_to_threshold"]["hidden=64,layers=1"]["threshold_peaks"]
    assert peaks["0.5"] == 1000  # seed 0 at 1,300 steps; the seed that never reached it is left out


def test_peaks_leave_out_a_size_that_only_some_seeds_ran(sweep, no_matplotlib):
    # Hidden 128 at 3,000 pairs with seed 0 only, and slow there: its one-seed means are not
    # comparable with the two-seed means, so neither peak moves to it.
    make_run(sweep / "h128-n3000-seed0", 3000, 0, 128, 1900)
    assert main([str(sweep)]) == 0
    report = read_report(sweep)
    assert report["critical_data_size"]["hidden=128,layers=1"]["peak_size"] == 1500
    assert set(report["steps_to_threshold"]["hidden=128,layers=1"]["threshold_peaks"].values()) == {1500}


def test_sweep_report_files(sweep):
    assert main([str(sweep)]) == 0
    report = read_report(sweep)
    assert len(report["figures"]) == 2 * 4 + 1  # four per model, one heat map over (model x size)
    for name in report["figures"]:
        assert (sweep / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (sweep / name).stat().st_size > 10_000
    md = (sweep / "report.md").read_text()
    assert all(f"]({name})" in md for name in report["figures"])
    assert "max(1 x memorisation step, 2 eval intervals)" in md and "## Critical data size" in md
    with open(sweep / "runs.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 16 and rows[0]["regime"] and "steps_to_0.9" in rows[0]
    assert {r["generalization_step"] for r in rows if r["train_size"] == "500"} == {""}


def test_report_on_a_sweep_still_running(sweep, capsys, no_matplotlib):
    (sweep / "h64-n1500-seed1" / "summary.json").unlink()
    (sweep / "sweep.json").write_text(json.dumps({"runs": [f"run{i}" for i in range(18)]}))
    assert main([str(sweep)]) == 0
    out = capsys.readouterr().out
    assert "15 of 18 runs finished; report covers the finished ones" in out and "h64-n1500-seed1" in out
    report = read_report(sweep)
    assert report["unfinished"] == ["h64-n1500-seed1"] and len(report["runs"]) == 15
    assert "15 of 18 runs finished" in (sweep / "report.md").read_text()
    # Seed 1 of hidden 64 now lacks 1,500: it generalises only at 2,000 among its finished runs.
    per_seed = report["critical_data_size"]["hidden=64,layers=1"]["per_seed"]
    assert [s["critical_size"] for s in per_seed] == [1000, 2000]


def test_window_and_surplus_flags_change_the_verdicts(sweep, tmp_path, no_matplotlib):
    out = tmp_path / "out"
    assert main([str(sweep), "--out", str(out), "--window", "1200", "--surplus-delay", "20",
                 "--thresholds", "0.5,0.9"]) == 0
    assert not (sweep / "report.json").exists()
    report = read_report(out)
    regimes = {(r["hidden"], r["seed"], r["train_size"]): r for r in report["runs"]}
    assert regimes[(64, 0, 1000)]["regime"] == "insufficiency"  # generalised at 1,300: past the window
    assert regimes[(64, 0, 1000)]["budget_steps"] == 1200
    assert regimes[(128, 0, 1500)]["regime"] == "insufficiency"
    assert regimes[(64, 1, 1500)]["regime"] == "surplus"  # delay 1,000 <= 20 x 100
    assert set(regimes[(64, 0, 2000)]["steps_to_threshold"]) == {"0.5", "0.9"}
    assert report["critical_data_size"]["hidden=128,layers=1"]["estimate"] == 2000


def test_single_run_report(tmp_path, capsys):
    run = tmp_path / "run"
    make_run(run, 2000, 0, 128, 800)
    assert main([str(run)]) == 0
    report = read_report(run)
    assert report["kind"] == "run" and report["critical_data_size"] == {}
    (r,) = report["runs"]
    assert (r["memorization_step"], r["generalization_step"], r["delay"], r["regime"]) == (100, 800, 700, "sufficiency")
    assert r["steps_to_threshold"]["0.5"] == 800
    assert len(report["figures"]) == 2 and all((run / f).exists() for f in report["figures"])
    assert "sufficiency" in (run / "report.md").read_text()


def test_other_settings_that_vary_split_the_groups(tmp_path, no_matplotlib):
    root = tmp_path / "sweep"
    for alpha in (None, 0.98):
        for size, gen in ((500, None), (1000, 600)):
            make_run(root / f"a{alpha}-n{size}", size, 0, 64, gen, grokfast_alpha=alpha)
    assert main([str(root)]) == 0
    # ffn = 4 x hidden, device and out vary or follow the model: none of them names a group.
    assert list(read_report(root)["critical_data_size"]) == ["hidden=64,layers=1,grokfast_alpha=None",
                                                             "hidden=64,layers=1,grokfast_alpha=0.98"]


def test_without_matplotlib_the_tables_are_still_written(sweep, capsys, no_matplotlib):
    assert main([str(sweep)]) == 0
    assert "pip install 'grokfast-train[plot]'" in capsys.readouterr().out
    assert read_report(sweep)["figures"] == [] and not (sweep / "figures").exists()
    assert "No figures: they need matplotlib" in (sweep / "report.md").read_text()
    assert (sweep / "runs.csv").exists()


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0]
    return err[0]


def test_bad_input_is_one_line(tmp_path, sweep, capsys):
    assert main([str(tmp_path / "missing")]) == 2
    assert "does not exist" in one_line_error(capsys) and not (tmp_path / "missing").exists()
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty")]) == 2
    assert "holds no runs" in one_line_error(capsys)
    assert main([str(sweep), "--thresholds", "0.5,1.5"]) == 2
    assert "--thresholds" in one_line_error(capsys)
    assert main([str(sweep), "--bogus"]) == 2
    one_line_error(capsys)
    (sweep / "h64-n500-seed0" / "summary.json").write_text("{not json")
    assert main([str(sweep)]) == 1
    assert "h64-n500-seed0/summary.json" in one_line_error(capsys)
    (sweep / "h64-n500-seed0" / "summary.json").write_text(json.dumps({"generalization_step": None}))
    (sweep / "h64-n1000-seed0" / "metrics.jsonl").write_text('{"step": 10}\n')
    assert main([str(sweep)]) == 1
    one_line_error(capsys)


def test_an_unwritable_out_is_one_line(tmp_path, sweep, capsys, no_matplotlib):
    (tmp_path / "a-file").write_text("")
    assert main([str(sweep), "--out", str(tmp_path / "a-file" / "report")]) == 1  # cannot create --out
    assert "cannot create --out" in one_line_error(capsys)
    (tmp_path / "out" / "report.json").mkdir(parents=True)  # an OSError while writing: one line too
    assert main([str(sweep), "--out", str(tmp_path / "out")]) == 1
    assert "report.json" in one_line_error(capsys)


def test_nothing_finished_is_one_line(tmp_path, capsys):
    make_run(tmp_path / "s" / "a", 500, 0, 64, None, finished=False)
    assert main([str(tmp_path / "s")]) == 1
    assert "none of the 1 runs" in one_line_error(capsys)
    assert main([str(tmp_path / "s" / "a")]) == 1
    assert "has not finished yet" in one_line_error(capsys)
    make_run(tmp_path / "s" / "b", 500, 0, 64, None)
    assert main([str(tmp_path / "s" / "b"), "--window", "5"]) == 2  # the first evaluation is at step 10
    assert "--window 5 ends before the first evaluation" in one_line_error(capsys)


def test_duplicate_runs_are_flagged(sweep, no_matplotlib):
    import shutil

    shutil.copytree(sweep / "h64-n500-seed0", sweep / "h64-n500-seed0-again")
    assert main([str(sweep)]) == 0
    (warning,) = read_report(sweep)["warnings"]
    assert "seed 0: several runs (h64-n500-seed0, h64-n500-seed0-again)" in warning
    per_size = read_report(sweep)["critical_data_size"]["hidden=64,layers=1"]["per_size"]
    assert per_size[0] == {"train_size": 500, "seeds": 3, "generalised": 0, "mean_generalization_step": None}


def test_several_sweeps_compare_in_one_report(tmp_path, capsys, no_matplotlib):
    # two sweeps that differ in weight decay: one report, one group per weight decay, runs named by sweep
    for name, wd, gens in (("wd1", 1.0, {500: None, 1000: 1300, 2000: 150}), ("wd0", 0.0, {500: None, 1000: None, 2000: 900})):
        for seed in (0, 1):
            for size, gen in gens.items():
                make_run(tmp_path / name / f"n{size}-s{seed}", size, seed, 64, gen, weight_decay=wd)
    assert main([str(tmp_path / "wd1"), str(tmp_path / "wd0"), "--out", str(tmp_path / "both")]) == 0
    report = read_report(tmp_path / "both")
    assert not (tmp_path / "wd1" / "report.json").exists() and not (tmp_path / "wd0" / "report.json").exists()
    cds = report["critical_data_size"]
    assert {k: v["estimate"] for k, v in cds.items()} == {"hidden=64,layers=1,weight_decay=0.0": 2000,
                                                          "hidden=64,layers=1,weight_decay=1.0": 1000}
    assert sorted(r["run"] for r in report["runs"])[:2] == ["wd0/n1000-s0", "wd0/n1000-s1"]
    assert report["finished"] == 12 and report["warnings"] == []
    # several directories need --out; two of the same name cannot be told apart
    assert main([str(tmp_path / "wd1"), str(tmp_path / "wd0")]) == 2
    assert "needs --out" in one_line_error(capsys)
    make_run(tmp_path / "other" / "wd1" / "n500-s0", 500, 0, 64, None)
    assert main([str(tmp_path / "wd1"), str(tmp_path / "other" / "wd1"), "--out", str(tmp_path / "x")]) == 2
    assert "two of the directories are named wd1" in one_line_error(capsys)
    assert main([str(tmp_path / "wd1"), str(tmp_path / "missing"), "--out", str(tmp_path / "x")]) == 2
    assert "missing does not exist" in one_line_error(capsys)


def test_the_cli_dispatches_report(tmp_path):
    make_run(tmp_path / "run", 1000, 0, 64, None)
    proc = subprocess.run([sys.executable, "-m", "grokfast_train", "report", str(tmp_path / "run"), "--sigma", "0"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert read_report(tmp_path / "run")["settings"]["sigma_steps"] == 0
    assert read_report(tmp_path / "run")["runs"][0]["regime"] == "insufficiency"
    proc = subprocess.run([sys.executable, "-m", "grokfast_train", "report", str(tmp_path / "nope")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1


def test_execution_settings_and_older_run_files_do_not_split_groups(tmp_path, no_matplotlib):
    """Runs of one sweep trained across a version change: a newer config.json records settings an
    older one lacks (cuda_graph, dtype) or execution settings differ (--log, --cuda-graph). They
    are one experiment unless a setting that changes the trajectory differs."""
    root = tmp_path / "s"
    make_run(root / "old", 1000, 0, 128, gen=900)
    make_run(root / "new", 1000, 1, 128, gen=900, cuda_graph="off", dtype="fp32", log="tensorboard")
    assert main([str(root)]) == 0
    assert {r["model"] for r in read_report(root)["runs"]} == {"hidden=128,layers=1"}
    make_run(root / "bf16", 1000, 2, 128, gen=900, dtype="bf16")  # another trajectory: its own group
    assert main([str(root)]) == 0
    assert len({r["model"] for r in read_report(root)["runs"]}) == 2


def test_every_setting_a_resume_may_change_is_not_an_experiment():
    from grokfast_train.report import NOT_EXPERIMENT
    from grokfast_train.rundir import RESUMABLE

    assert RESUMABLE - {"steps"} <= NOT_EXPERIMENT


def test_a_size_whose_runs_all_ended_early_draws_without_warnings(tmp_path, recwarn):
    """The (size x step) heat map leaves blank the steps past every seed's last evaluation (a size whose
    runs all stopped early): no 'Mean of empty slice' on the console."""
    root = tmp_path / "sweep"
    for seed in (0, 1):
        make_run(root / f"n500-s{seed}", 500, seed, 64, gen=None)
        stopped = root / f"n1000-s{seed}"
        make_run(stopped, 1000, seed, 64, gen=600)
        end = 800 + 100 * seed  # --stop-after-generalising ended it here, in its budget of 2,000
        rows = [r for r in (stopped / "metrics.jsonl").read_text().splitlines() if json.loads(r)["step"] <= end]
        (stopped / "metrics.jsonl").write_text("".join(r + "\n" for r in rows))
        summary = json.loads((stopped / "summary.json").read_text()) | {"stopped_early_at": end, "final_step": end}
        (stopped / "summary.json").write_text(json.dumps(summary))
    assert main([str(root)]) == 0
    assert len(read_report(root)["figures"]) == 4
    assert [str(w.message) for w in recwarn if issubclass(w.category, RuntimeWarning)] == []
