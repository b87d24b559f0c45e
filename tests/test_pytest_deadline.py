"""scripts/pytest_deadline.py, the plugin that lets gpu_check.sh's pytest sessions end with their summary
before a section's time cap: real pytest sessions in a subprocess, on generated test files."""

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_pytest(tmp_path: Path, first_test_body: str, deadline: float | None) -> subprocess.CompletedProcess:
    (tmp_path / "test_two.py").write_text(
        "import os\nimport time\n\n"
        f"def test_first():\n    {first_test_body}\n\n"
        "def test_after():\n    pass\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("PYTEST_DEADLINE", None)
    if deadline is not None:
        env["PYTEST_DEADLINE"] = str(deadline)
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "scripts.pytest_deadline", "-p", "no:cacheprovider",
                           "-rs", str(tmp_path / "test_two.py")], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=120)


def test_once_the_deadline_passes_later_tests_are_skipped_and_the_session_ends_normally(tmp_path):
    # the deadline passes while the first test runs: it completes, the next one is skipped
    passes_now = 'os.environ["PYTEST_DEADLINE"] = str(time.time() - 1)'
    done = run_pytest(tmp_path, passes_now, time.time() + 3600)
    assert done.returncode == 0 and "1 passed, 1 skipped" in done.stdout, done.stdout + done.stderr
    assert "PYTEST_DEADLINE passed" in done.stdout
    past = run_pytest(tmp_path, "pass", time.time() - 1)
    assert past.returncode == 0 and "2 skipped" in past.stdout, past.stdout


def test_without_a_deadline_or_before_it_every_test_runs(tmp_path):
    for deadline in (None, time.time() + 3600):
        done = run_pytest(tmp_path, "pass", deadline)
        assert done.returncode == 0 and "2 passed" in done.stdout, done.stdout
