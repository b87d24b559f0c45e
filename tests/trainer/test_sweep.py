"""``grokfast-train sweep`` end to end: real runs, resumption, grid changes, executors, bad grids."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from grokfast_train import resources
from grokfast_train.cli import main
from grokfast_train.rundir import RunLock

TINY = ["--p", "13", "--hidden", "16", "--heads", "2", "--steps", "30", "--eval-every", "10",
        "--threads-per-run", "1"]
GRID = ["--train-sizes", "40,80", "--seeds", "0,1"]
NAMES = ["n40-h16-l1-s0", "n80-h16-l1-s0", "n40-h16-l1-s1", "n80-h16-l1-s1"]  # the order they train in


def sweep(out: Path, *extra: str) -> int:
    return main(["sweep", *TINY, *GRID, "--out", str(out), *extra])


def metrics(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "elapsed_s"} for r in rows]


def summaries(sweep_dir: Path) -> dict[str, dict]:
    keep = ("memorization_step", "generalization_step", "best_test_acc", "final_test_acc", "final_train_acc",
            "train_size")
    return {name: {k: json.loads((sweep_dir / name / "summary.json").read_text())[k] for k in keep}
            for name in NAMES}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep") / "s"
    assert sweep(out, "--jobs", "1") == 0  # one at a time: the log's order is the training order
    return out


def test_a_sweep_is_a_grid_of_ordinary_runs(finished, tmp_path):
    book = json.loads((finished / "sweep.json").read_text())
    assert sorted(book["runs"]) == sorted(NAMES) and all(r["status"] == "done" for r in book["runs"].values())
    assert book["shared"]["p"] == 13 and "seed" not in book["shared"] and "train_size" not in book["shared"]
    for name in NAMES:
        cfg = json.loads((finished / name / "config.json").read_text())
        assert (cfg["train_size"], cfg["seed"]) == (int(name[1:3]), int(name[-1]))
    lines = [line for line in (finished / "sweep.log").read_text().splitlines() if line.startswith("[")]
    assert [line.split("] ")[1].split(":")[0] for line in lines] == NAMES
    # each run is exactly the solo run of the same settings
    solo = ["--p", "13", "--hidden", "16", "--heads", "2", "--steps", "30", "--eval-every", "10", "--quiet",
            "--train-size", "80", "--seed", "1", "--out", str(tmp_path / "solo")]
    assert main(solo) == 0
    assert metrics(tmp_path / "solo") == metrics(finished / "n80-h16-l1-s1")


def test_rerun_skips_finished_runs_and_a_larger_grid_adds_runs(finished, capsys):
    stamps = {n: (finished / n / "summary.json").stat().st_mtime_ns for n in NAMES}
    assert sweep(finished) == 0
    assert "4 finished before, 0 to train" in capsys.readouterr().out
    assert main(["sweep", *TINY, "--train-sizes", "40,80,60", "--seeds", "0,1", "--out", str(finished)]) == 0
    out = capsys.readouterr().out
    assert "6 runs (4 finished before, 2 to train)" in out
    assert {n: (finished / n / "summary.json").stat().st_mtime_ns for n in NAMES} == stamps  # untouched
    assert (finished / "n60-h16-l1-s1" / "summary.json").exists()


def test_a_different_shared_setting_is_refused(finished, capsys):
    assert sweep(finished, "--lr", "0.01") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "lr=0.001" in err and "another --out" in err


@pytest.mark.parametrize("args,needle", [
    (["--train-sizes", ""], "--train-sizes"),
    (["--seeds", "0,1,0"], "more than once"),
    (["--fracs", "0.5,1.2"], "outside (0, 1]"),
    (["--fracs", "0.5", "--train-sizes", "40"], "not both"),
    (["--hidden-sizes", "16,31"], "divisible"),
    (["--train-sizes", "40,127"], "exceeds the training pool of 126"),
    (["--hidden-sizes", "16,x"], "--hidden-sizes"),
    (["--jobs", "0"], "--jobs"),
    (["--gpus-per-run", "0.5"], "--executor ray"),
    (["--resume"], "no --resume"),
    (["--pack", "0"], "--pack"),
    (["--pack", "wide"], "--pack"),
])
def test_bad_grids_are_one_line_and_exit_2(tmp_path, capsys, args, needle):
    assert main(["sweep", "--p", "13", "--heads", "2", "--hidden", "16", "--steps", "5", *args,
                 "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err
    assert not (tmp_path / "s").exists()


def test_parallel_jobs_give_the_same_runs(finished, tmp_path, capsys, monkeypatch):
    """The default, --jobs auto, on the CPU: one run per core (two, as this machine has; the rule itself:
    test_resources.py), each on one thread, in worker processes -- the same runs as one at a time."""
    monkeypatch.setattr(resources, "cores", lambda: 2)
    assert sweep(tmp_path / "p") == 0
    header = capsys.readouterr().out.splitlines()[0]
    assert header.endswith("2 at a time, 1 thread per run"), header
    assert summaries(tmp_path / "p") == summaries(finished)
    for name in NAMES:
        assert metrics(tmp_path / "p" / name) == metrics(finished / name)
    assert sweep(tmp_path / "q", "--jobs", "2") == 0  # and as asked
    assert summaries(tmp_path / "q") == summaries(finished)


def test_a_run_held_by_another_process_is_left_to_it(finished, tmp_path, capsys):
    out = tmp_path / "s"
    held = RunLock(out / NAMES[1])
    try:
        assert sweep(out) == 1  # not all runs finished
    finally:
        held.release()
    text = capsys.readouterr().out
    assert "left alone" in text and "another process" in text
    assert json.loads((out / "sweep.json").read_text())["runs"][NAMES[1]]["status"] == "running elsewhere"
    assert not (out / NAMES[1] / "metrics.jsonl").exists()
    assert sweep(out) == 0 and metrics(out / NAMES[1]) == metrics(finished / NAMES[1])


def test_interrupted_sweep_resumes_and_trains_every_run_once(finished, tmp_path):
    out = tmp_path / "s"
    # long enough that the Ctrl-C lands inside a run; the same grid as `finished` otherwise; one run at a
    # time, in the sweep's process, which the SIGINT reaches (not the whole process group, as a terminal's)
    args = [sys.executable, "-m", "grokfast_train.cli", "sweep", *TINY, *GRID, "--out", str(out), "--jobs", "1"]
    args[args.index("30")] = "400"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    target = out / NAMES[1] / "metrics.jsonl"
    deadline = time.time() + 120
    while not (target.exists() and len(target.read_text().splitlines()) >= 2):
        assert child.poll() is None and time.time() < deadline, child.communicate()
        time.sleep(0.05)
    child.send_signal(signal.SIGINT)
    stdout, stderr = child.communicate(timeout=120)
    assert child.returncode == 130, stderr
    assert "interrupted" in stdout and not (out / NAMES[2]).exists()  # nothing started after the Ctrl-C
    first_done = (out / NAMES[0] / "summary.json").stat().st_mtime_ns
    state = json.loads((out / "sweep.json").read_text())["runs"]
    assert state[NAMES[1]]["status"] == "interrupted"

    rerun = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    assert "1 finished before, 3 to train" in rerun.stdout
    assert (out / NAMES[0] / "summary.json").stat().st_mtime_ns == first_done  # not trained again
    log = (out / NAMES[1] / "train.log").read_text()
    assert log.count("resuming") == 1
    # the interrupted run equals the same run trained without interruption
    solo = ["--p", "13", "--hidden", "16", "--heads", "2", "--steps", "400", "--eval-every", "10", "--quiet",
            "--train-size", "80", "--seed", "0", "--out", str(tmp_path / "solo")]
    assert main(solo) == 0
    assert metrics(tmp_path / "solo") == metrics(out / NAMES[1])


def test_a_sigint_to_a_parallel_sweep_stops_its_running_runs(tmp_path):
    """Two worker processes (the default on two cores); SIGINT sent to the sweep's pid alone, as a
    scheduler or `kill -INT` would: the runs in progress checkpoint and stop, nothing new starts, the
    sweep exits 130 -- and a rerun resumes them onto their uninterrupted trajectories."""
    out = tmp_path / "s"
    args = [sys.executable, "-m", "grokfast_train.cli", "sweep", *TINY, *GRID, "--out", str(out), "--jobs", "2"]
    args[args.index("30")] = "2000"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    running = [out / name / "metrics.jsonl" for name in NAMES[:2]]
    deadline = time.time() + 120
    while not all(m.exists() and len(m.read_text().splitlines()) >= 2 for m in running):
        assert child.poll() is None and time.time() < deadline, child.communicate()
        time.sleep(0.05)
    child.send_signal(signal.SIGINT)
    stdout, stderr = child.communicate(timeout=120)
    assert child.returncode == 130, stderr
    state = json.loads((out / "sweep.json").read_text())["runs"]
    assert [state[name]["status"] for name in NAMES[:2]] == ["interrupted", "interrupted"], stdout
    assert not (out / NAMES[2]).exists() and not (out / NAMES[3]).exists()
    for name in NAMES[:2]:
        assert (out / name / "checkpoint.pt").exists() and not (out / name / "summary.json").exists()
    stopped_at = len(metrics(out / NAMES[1]))
    rerun = subprocess.run([*args[:-2], "--jobs", "1", "--seeds", "0"], capture_output=True, text=True, env=env,
                           timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    solo = ["--p", "13", "--hidden", "16", "--heads", "2", "--steps", "2000", "--eval-every", "10", "--quiet",
            "--train-size", "80", "--seed", "0", "--out", str(tmp_path / "solo")]
    assert main(solo) == 0
    assert len(metrics(out / NAMES[1])) > stopped_at and metrics(tmp_path / "solo") == metrics(out / NAMES[1])


def _alive(pid: int) -> bool:
    """Running (a zombie is not: an orphan waits there until whoever adopted it reaps it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux's parent-death signal, and /proc")
def test_workers_of_a_killed_sweep_checkpoint_and_stop(tmp_path):
    """SIGKILL to the sweep (no handler runs): its workers take a SIGINT from the kernel, so their runs
    checkpoint and stop and free their run directories, rather than training on for no one."""
    from grokfast_train.rundir import lock_holder

    out = tmp_path / "s"
    args = [sys.executable, "-m", "grokfast_train.cli", "sweep", *TINY, *GRID, "--out", str(out), "--jobs", "2"]
    args[args.index("30")] = str(10 ** 7)  # never done by itself
    # Output to a file, not a pipe: the workers inherit it, and a pipe no one drains after the kill would
    # fill and block them mid-write (no signal can then stop them cleanly)
    output = (tmp_path / "sweep.out").open("w")
    child = subprocess.Popen(args, stdout=output, stderr=subprocess.STDOUT, text=True,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
    running = [out / name for name in NAMES[:2]]
    workers = []
    try:
        deadline = time.time() + 120
        while not all((d / "metrics.jsonl").exists() and len((d / "metrics.jsonl").read_text().splitlines()) >= 2
                      for d in running):
            assert child.poll() is None and time.time() < deadline, (tmp_path / "sweep.out").read_text()
            time.sleep(0.05)
        workers = [int(lock_holder(d)) for d in running]
        child.kill()
        child.wait()
        deadline = time.time() + 60
        while any(_alive(pid) for pid in workers):
            assert time.time() < deadline, "the workers of a killed sweep are still there"
            time.sleep(0.1)
        assert all(lock_holder(d) is None for d in running)
        for d in running:  # stopped as by a Ctrl-C: checkpointed, resumable
            assert "interrupted at step" in (d / "train.log").read_text()
            assert (d / "checkpoint.pt").exists() and not (d / "summary.json").exists()
    finally:
        output.close()
        for pid in workers:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_ray_executor_gives_the_same_runs(finished, tmp_path):
    """A real local Ray instance, each run a task: the runs equal the local executor's (two of them,
    to keep Ray's start-up the main cost)."""
    pytest.importorskip("ray", reason="the ray extra is not installed")
    out = tmp_path / "r"
    assert main(["sweep", *TINY, "--train-sizes", "40,80", "--seeds", "1", "--out", str(out), "--executor", "ray"]) == 0
    for name in ("n40-h16-l1-s1", "n80-h16-l1-s1"):
        assert metrics(out / name) == metrics(finished / name)
        assert json.loads((out / name / "summary.json").read_text())["final_step"] == 30


def test_two_invocations_on_one_sweep_keep_each_others_runs(tmp_path):
    from grokfast_train.sweep import Point, SweepFile

    a, b = SweepFile(tmp_path, {"p": 13}), SweepFile(tmp_path, {"p": 13})  # both read the sweep before either saved
    a.add(Point("train_size", 40, 16, 1, 0), "pending")
    a.save()
    b.add(Point("train_size", 80, 16, 1, 0), "pending")
    b.save()
    assert sorted(json.loads((tmp_path / "sweep.json").read_text())["runs"]) == ["n40-h16-l1-s0", "n80-h16-l1-s0"]


def test_a_sweep_file_from_before_a_setting_existed(finished, capsys):
    """A setting added since the sweep began counts, in the old file, as the value it had then."""
    path = finished / "sweep.json"
    original = path.read_text()
    try:
        book = json.loads(original)
        del book["shared"]["eps"]  # older files lacked it; its default then and now is the same
        path.write_text(json.dumps(book))
        assert sweep(finished) == 0
        book = json.loads(original)
        del book["shared"]["modular_format"]  # runs from before it existed used the compact format
        path.write_text(json.dumps(book))
        assert sweep(finished) == 2
        assert "modular_format='compact'" in capsys.readouterr().err
    finally:
        path.write_text(original)


def test_a_bad_value_on_an_axis_names_the_grid_point(tmp_path, capsys):
    assert main(["sweep", "--p", "13", "--heads", "2", "--hidden-sizes", "16,0", "--steps", "5",
                 "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "grid point" in err and "h0" in err and "--hidden" in err


# -- packing (--pack): the same runs, trained as one stacked model ----------------------------------


def close_metrics(a: list[dict], b: list[dict], tol: float = 2e-4) -> bool:
    return [r["step"] for r in a] == [r["step"] for r in b] and all(
        x[k] == pytest.approx(y[k], rel=tol, abs=tol) for x, y in zip(a, b) for k in x)


def test_a_packed_sweep_gives_the_runs_of_an_unpacked_one(finished, tmp_path, capsys):
    """Full batch over 40 and 80 pairs, two seeds: one pack of four ragged runs; each run's files as solo."""
    out = tmp_path / "k"
    assert sweep(out, "--pack", "4") == 0
    text = capsys.readouterr().out
    assert "packed: 1 pack of 4 runs" in text and text.count("(a pack of 4)") == 4
    for name in NAMES:
        assert close_metrics(metrics(out / name), metrics(finished / name)), name
        assert sorted(f.name for f in (out / name).iterdir()) == sorted(f.name for f in (finished / name).iterdir())
    assert summaries(out) == summaries(finished)
    # --pack 3: packs of at most three; auto on the CPU: none
    assert sweep(tmp_path / "k3", "--pack", "3") == 0
    assert "packed: 1 pack of 3 runs" in capsys.readouterr().out  # and one run alone
    assert sweep(tmp_path / "auto") == 0
    assert "packed:" not in (text := capsys.readouterr().out) and "(a pack of" not in text


def test_a_packed_sweep_leaves_a_run_held_elsewhere_and_packs_the_rest(finished, tmp_path, capsys):
    out = tmp_path / "s"
    held = RunLock(out / NAMES[2])
    try:
        assert sweep(out, "--pack", "4") == 1
    finally:
        held.release()
    text = capsys.readouterr().out
    assert "left alone" in text and text.count("(a pack of 3)") == 3
    assert not (out / NAMES[2] / "metrics.jsonl").exists()
    assert sweep(out, "--pack", "4") == 0  # the fourth run alone now
    for name in NAMES:
        assert close_metrics(metrics(out / name), metrics(finished / name)), name


def test_an_extended_packed_sweep_resumes_its_runs_in_a_pack(finished, tmp_path, capsys):
    out = tmp_path / "s"
    assert sweep(out, "--pack", "4") == 0
    longer = ["sweep", *TINY, *GRID, "--out", str(out), "--pack", "4"]
    longer[longer.index("30")] = "50"
    assert main(longer) == 0
    assert capsys.readouterr().out.count("(a pack of 4)") == 8
    for name in NAMES:
        rows = metrics(out / name)
        assert [r["step"] for r in rows] == [10, 20, 30, 40, 50]
        assert "resuming" in (out / name / "train.log").read_text()


def test_ray_executor_trains_a_pack(finished, tmp_path):
    """A pack as one Ray task (train_unit): its runs are the local executor's, within the pack tolerance."""
    pytest.importorskip("ray", reason="the ray extra is not installed")
    out = tmp_path / "r"
    assert main(["sweep", *TINY, "--train-sizes", "40,80", "--seeds", "1", "--out", str(out), "--executor", "ray",
                 "--pack", "2"]) == 0
    for name in ("n40-h16-l1-s1", "n80-h16-l1-s1"):
        assert close_metrics(metrics(out / name), metrics(finished / name)), name
        assert "packed with 1 other run" in (out / name / "train.log").read_text()


def test_a_dry_run_shows_the_plan_and_writes_nothing(finished, tmp_path, capsys):
    fresh = tmp_path / "s"
    assert sweep(fresh, "--dry-run") == 0
    out = capsys.readouterr().out
    assert not fresh.exists()
    assert "4 runs: 4 new; 4 units of work" in out and out.count("new: trains 30 steps") == 4
    # the finished sweep (a copy: other tests grow it), 20 steps longer and one size larger, packed by 4
    done = tmp_path / "done"
    shutil.copytree(finished, done, ignore=shutil.ignore_patterns("n60-*"))
    before = {p: p.stat().st_mtime_ns for p in done.rglob("*")}
    longer = ["sweep", *TINY, "--train-sizes", "40,80,60", "--seeds", "0,1", "--out", str(done),
              "--pack", "4", "--dry-run"]
    longer[longer.index("30")] = "50"
    assert main(longer) == 0
    out = capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in done.rglob("*")} == before  # nothing written, nothing trained
    assert "6 runs: 4 resumable, 2 new; 2 units of work, 6 runs in 2 packs" in out
    for name in NAMES:
        assert f"{name}  resumes from its checkpoint at step 30 of 50  [pack 1]" in out
    assert "n60-h16-l1-s0  new: trains 50 steps  [pack 2]" in out
    # as it is: every run done
    assert sweep(done, "--dry-run") == 0
    assert "4 runs: 4 done; 0 units of work" in capsys.readouterr().out
    # a run another process trains is shown as left to it
    held = RunLock(tmp_path / "h" / NAMES[1])
    try:
        assert main(["sweep", *TINY, *GRID, "--out", str(tmp_path / "h"), "--dry-run"]) == 0
    finally:
        held.release()
    out = capsys.readouterr().out
    assert "4 runs: 1 running elsewhere, 3 new" in out
    assert f"{NAMES[1]}  being trained by another process (pid {os.getpid()}): left to it" in out
    assert [p.name for p in (tmp_path / "h").rglob("*")] == [NAMES[1], ".lock"]
    # a dry run refuses what the real run would refuse
    assert main(["sweep", *TINY, *GRID, "--out", str(done), "--lr", "0.01", "--dry-run"]) == 2
    assert "holds a sweep with lr=" in capsys.readouterr().err
