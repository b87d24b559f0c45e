"""--stop-after-generalising: a run ends at the first evaluation that many steps after it generalised,
with a checkpoint, so that nothing of the trajectory is lost -- alone, in a pack and in a sweep.

``--gen-threshold 0`` makes a run "generalise" at its first evaluation (step 10 here), so the stop
step is known in advance: with 25 steps it is the first evaluation at or after step 35, i.e. 40.
"""

import json
import os
import signal
from pathlib import Path

import pytest

from grokfast_train.cli import config_from_args, main
from grokfast_train.pack import PackedRun
from grokfast_train.sweep import run_status
from grokfast_train.train import Run

TINY = ["--p", "13", "--hidden", "16", "--heads", "2", "--eval-every", "10", "--quiet", "--device", "cpu"]


def rows(run_dir: Path) -> list[dict]:
    out = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "elapsed_s"} for r in out]


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def train(out: Path, *extra: str, steps: int = 100) -> int:
    return main([*TINY, "--train-size", "60", "--steps", str(steps), "--out", str(out), *extra])


@pytest.fixture(scope="module")
def full(tmp_path_factory) -> Path:
    """The same run without a stop: 100 steps."""
    out = tmp_path_factory.mktemp("full") / "run"
    assert train(out, "--gen-threshold", "0") == 0
    return out


def test_a_run_stops_after_generalising_and_trains_on_when_asked(full, tmp_path, capsys):
    run = tmp_path / "run"
    assert train(run, "--gen-threshold", "0", "--stop-after-generalising", "25") == 0
    assert rows(run) == rows(full)[:4]  # steps 10..40: the same trajectory, cut at the stop
    s = summary(run)
    assert (s["generalization_step"], s["final_step"], s["stopped_early_at"]) == (10, 40, 40)
    assert summary(full)["stopped_early_at"] is None
    # resumed while the stop still applies, it trains nothing and is finished again; "off" trains on, exactly
    capsys.readouterr()
    assert main(["--out", str(run), "--resume"]) == 0
    assert "it stops here" in capsys.readouterr().out
    assert rows(run) == rows(full)[:4] and summary(run)["stopped_early_at"] == 40
    assert summary(run)["steps_per_s"] == pytest.approx(s["steps_per_s"], rel=0.5)  # the run's rate, not 0
    assert main(["--out", str(run), "--resume", "--stop-after-generalising", "off"]) == 0
    assert rows(run) == rows(full)
    assert summary(run)["stopped_early_at"] is None


def test_a_run_that_never_generalises_or_ends_first_runs_its_steps(full, tmp_path):
    assert train(tmp_path / "never", "--gen-threshold", "1", "--stop-after-generalising", "0") == 0
    assert summary(tmp_path / "never")["final_step"] == 100
    # the stop would fall at step 100 itself: that is the end of the run, not an early stop
    assert train(tmp_path / "end", "--gen-threshold", "0", "--stop-after-generalising", "90") == 0
    assert rows(tmp_path / "end") == rows(full) and summary(tmp_path / "end")["stopped_early_at"] is None


@pytest.mark.parametrize("value", ["-1", "x", "2.5"])
def test_a_bad_value_is_one_line(tmp_path, capsys, value):
    assert train(tmp_path / "bad", "--stop-after-generalising", value) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--stop-after-generalising" in err[0]


def test_in_a_pack_a_stopped_run_ends_as_its_solo_run_and_the_others_go_on(full, tmp_path):
    """Run 0 stops at step 40; run 1 (another seed, never 'generalised') trains to 100. Each run's files
    are its solo run's."""
    def cfg(name: str, *extra: str):
        return config_from_args([*TINY, "--train-size", "60", "--steps", "100", "--out", str(tmp_path / name), *extra])

    stopping = ("--gen-threshold", "0", "--stop-after-generalising", "25")
    other = ("--seed", "1", "--gen-threshold", "1", "--stop-after-generalising", "25")
    results = PackedRun([cfg("p0", *stopping), cfg("p1", *other)], log=lambda _: None).fit()
    assert [r["stopped_early_at"] for r in results] == [40, None]
    assert train(tmp_path / "solo1", *other) == 0
    for packed, solo in ((tmp_path / "p0", full), (tmp_path / "p1", tmp_path / "solo1")):
        got, want = rows(packed), rows(solo)
        assert [r["step"] for r in got] == [r["step"] for r in want][:len(got)]
        for a, b in zip(got, want):
            for k in ("train_loss", "train_acc", "test_loss", "test_acc", "weight_norm"):
                assert a[k] == pytest.approx(b[k], rel=2e-4, abs=2e-4), (packed.name, a["step"], k)
    assert len(rows(tmp_path / "p0")) == 4 and len(rows(tmp_path / "p1")) == 10
    # the stopped run's checkpoint is its own, at its stop: it trains on alone, like the uninterrupted run
    assert main(["--out", str(tmp_path / "p0"), "--resume", "--stop-after-generalising", "off"]) == 0
    assert [r["step"] for r in rows(tmp_path / "p0")] == [r["step"] for r in rows(full)]
    assert rows(tmp_path / "p0")[-1]["test_acc"] == pytest.approx(rows(full)[-1]["test_acc"], abs=2e-4)


def test_a_run_interrupted_at_its_stop_or_resumed_past_it_is_finished_not_refused(full, tmp_path):
    """A checkpoint at or past the stop without a summary (a Ctrl-C at the stop evaluation; a run trained
    on, interrupted, and then given the flag again): the resume trains nothing and writes the summary --
    alone, and in a pack beside a run that trains on."""
    run = tmp_path / "run"
    assert train(run, "--gen-threshold", "0", steps=60) == 0  # trained past where 25 would have stopped it
    (run / "summary.json").unlink()
    assert main(["--out", str(run), "--resume", "--steps", "100", "--stop-after-generalising", "25"]) == 0
    assert rows(run) == rows(full)[:6] and summary(run)["stopped_early_at"] == 60
    # the same in a pack: the stopped run is finished at once, the other trains to 100 as its solo run
    assert train(tmp_path / "p0", "--gen-threshold", "0", steps=60) == 0
    assert train(tmp_path / "p1", "--seed", "1", "--gen-threshold", "1", steps=60) == 0
    (tmp_path / "p0" / "summary.json").unlink()
    assert train(tmp_path / "solo1", "--seed", "1", "--gen-threshold", "1") == 0

    def resumed(name: str, *extra: str):
        return config_from_args(["--out", str(tmp_path / name), "--resume", "--steps", "100", *extra])

    results = PackedRun([resumed("p0", "--stop-after-generalising", "25"), resumed("p1")], log=lambda _: None).fit()
    assert [r["stopped_early_at"] for r in results] == [60, None]
    assert rows(tmp_path / "p0") == rows(full)[:6]
    assert [r["step"] for r in rows(tmp_path / "p1")] == [r["step"] for r in rows(tmp_path / "solo1")]


def test_a_run_resumed_between_evaluations_past_its_stop_stops_at_the_next_one(full, tmp_path):
    """A Ctrl-C during step 45 checkpoints mid-interval (history to step 40). Given the flag, the resumed
    run has been generalised since step 10, but its state stands between evaluations: it trains to step
    50, evaluates, and stops there -- summary, metrics and checkpoint all at 50."""
    class CtrlCAt45(Run):
        def train_step(self):
            super().train_step()
            if self.step + 1 == 45:
                os.kill(os.getpid(), signal.SIGINT)

    run = tmp_path / "run"
    args = [*TINY, "--train-size", "60", "--steps", "100", "--gen-threshold", "0", "--out", str(run)]
    assert CtrlCAt45(config_from_args(args), log=lambda _: None).fit() is None
    assert main(["--out", str(run), "--resume", "--stop-after-generalising", "25"]) == 0
    s = summary(run)
    assert (s["final_step"], s["stopped_early_at"]) == (50, 50) and rows(run) == rows(full)[:5]


def test_a_report_says_which_runs_stopped_early(full, tmp_path):
    from grokfast_train.report import main as report_main

    sweep = tmp_path / "s"
    assert train(sweep / "a", "--gen-threshold", "0", "--stop-after-generalising", "25") == 0
    assert train(sweep / "b", "--seed", "1", "--gen-threshold", "0") == 0
    assert report_main([str(sweep)]) == 0
    warnings = json.loads((sweep / "report.json").read_text())["warnings"]
    assert len(warnings) == 1 and warnings[0].startswith("1 run stopped early (--stop-after-generalising: a)")


def test_a_sweep_counts_a_stopped_run_as_done_until_the_stop_is_lifted(full, tmp_path, capsys):
    grid = ["sweep", *TINY[:-2], "--train-sizes", "60", "--seeds", "0", "--steps", "100", "--gen-threshold", "0",
            "--threads-per-run", "1", "--out", str(tmp_path / "s")]
    assert main([*grid, "--stop-after-generalising", "25"]) == 0
    run = tmp_path / "s" / "n60-h16-l1-s0"
    assert summary(run)["stopped_early_at"] == 40
    assert run_status(run, 100, 25) == "done" and run_status(run, 100, 50) == "resumable"
    assert run_status(run, 100) == "resumable"
    capsys.readouterr()
    assert main([*grid, "--stop-after-generalising", "25"]) == 0
    assert "1 finished before, 0 to train" in capsys.readouterr().out
    assert main(grid) == 0  # the same sweep without the stop: its runs train on to --steps
    assert rows(run) == rows(full)


def test_raising_a_sweeps_budget_records_it_in_the_runs_its_stop_counts_done(full, tmp_path, capsys):
    """Seeds 0 and 1 finished a 40-step budget, generalised at step 10. The same sweep at 100 steps with
    a stop of 25 (and a new seed) trains nothing more in them, but their files say 100, as the new run's
    do -- so the report keeps the three in one group instead of splitting them by budget."""
    from grokfast_train.report import main as report_main

    sweep = tmp_path / "s"

    def grid(seeds: str, *extra: str) -> list[str]:
        return ["sweep", *TINY[:-2], "--train-sizes", "60", "--seeds", seeds, "--gen-threshold", "0",
                "--threads-per-run", "1", "--out", str(sweep), *extra]

    assert main(grid("0,1", "--steps", "40")) == 0
    run = sweep / "n60-h16-l1-s0"
    before = rows(run)
    assert run_status(run, 100, 25) == "resumable" and run_status(run, 40, 25) == "done"
    capsys.readouterr()
    assert main(grid("0,1,2", "--steps", "100", "--stop-after-generalising", "25", "--dry-run")) == 0
    assert "stops at once, at step 40 (it has generalised): records the budget of 100 steps" in capsys.readouterr().out
    assert main(grid("0,1,2", "--steps", "100", "--stop-after-generalising", "25")) == 0
    assert "3 to train, 2 of them only to record the raised --steps" in capsys.readouterr().out
    for seed in (0, 1, 2):
        r = sweep / f"n60-h16-l1-s{seed}"
        assert json.loads((r / "config.json").read_text())["steps"] == 100
        assert summary(r)["stopped_early_at"] == 40 and run_status(r, 100, 25) == "done"
    assert rows(run) == before == rows(full)[:4]
    assert report_main([str(sweep)]) == 0
    assert len(json.loads((sweep / "report.json").read_text())["steps_to_threshold"]) == 1
