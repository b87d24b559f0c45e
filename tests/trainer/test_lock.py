"""One process trains in a run directory at a time."""

import json
import os
import subprocess
import sys
import time

from grokfast_train.cli import main
from grokfast_train.rundir import RunLock

TINY = ["--p", "13", "--hidden", "16", "--heads", "2", "--train-size", "40", "--eval-every", "5",
        "--quiet", "--device", "cpu"]


def test_a_second_process_on_a_running_run_is_refused(tmp_path, capsys):
    run_dir = tmp_path / "run"
    child = subprocess.Popen([sys.executable, "-m", "grokfast_train.cli", *TINY, "--steps", "100000",
                              "--out", str(run_dir)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.time() + 60
        while not (run_dir / "metrics.jsonl").exists() or not (run_dir / "metrics.jsonl").read_text():
            assert child.poll() is None and time.time() < deadline, child.stderr.read()
            time.sleep(0.2)
        for args in (["--resume"], ["--force"]):  # neither continuing nor overwriting it
            assert main([*TINY, "--steps", "200000", "--out", str(run_dir), *args]) == 1
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and f"pid {child.pid}" in err and "another process" in err
        assert child.poll() is None  # the first run was not disturbed
    finally:
        child.terminate()
        child.wait(timeout=60)


def test_the_lock_is_released_when_a_run_ends_or_fails(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main([*TINY, "--steps", "5", "--out", str(run_dir)]) == 0
    RunLock(run_dir).release()  # free again after a finished run
    assert main([*TINY, "--steps", "10", "--out", str(run_dir), "--resume", "--lr", "1"]) == 2  # refused setting
    RunLock(run_dir).release()  # ... and after a refused resume
    assert main([*TINY, "--steps", "10", "--out", str(run_dir), "--resume"]) == 0
    assert json.loads((run_dir / "summary.json").read_text())["final_step"] == 10


def test_lock_held_in_this_process_refuses_a_run(tmp_path, capsys):
    held = RunLock(tmp_path / "run")
    try:
        assert main([*TINY, "--steps", "5", "--out", str(tmp_path / "run")]) == 1
        assert "another process" in capsys.readouterr().err
        assert not (tmp_path / "run" / "config.json").exists()  # refused before touching the run
    finally:
        held.release()


def test_a_run_left_in_a_scripts_global_exits_quietly(tmp_path):
    """A Run still alive when the interpreter shuts down (a script's global) releases its lock without
    an 'Exception ignored' traceback: os's globals may be gone by then."""
    script = (f"from grokfast_train.cli import config_from_args\n"
              f"from grokfast_train.train import Run\n"
              f"run = Run(config_from_args({[*TINY, '--steps', '10', '--out', str(tmp_path / 'run')]!r}), "
              f"log=lambda _: None)\n"
              f"run.train_step()\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0 and "Exception ignored" not in done.stderr, done.stderr
