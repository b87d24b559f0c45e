"""A pytest plugin for scripted runs with a hard time cap (``scripts/gpu_check.sh``): once the wall-clock
time in ``PYTEST_DEADLINE`` (seconds since the epoch) has passed, every test not yet started is skipped,
so the session still ends normally -- its summary, failures and benchmark JSON written -- instead of
being interrupted. (Interrupting is no substitute: a test that trains takes SIGINT as "checkpoint and
stop", so pytest would never see it.)

    PYTEST_DEADLINE=$(( $(date +%s) + 100 )) python -m pytest -p scripts.pytest_deadline ...
"""

from __future__ import annotations

import os
import time

import pytest


def _deadline() -> float | None:
    value = os.environ.get("PYTEST_DEADLINE")
    return float(value) if value else None


def pytest_runtest_setup(item: pytest.Item) -> None:
    deadline = _deadline()
    if deadline is not None and time.time() > deadline:
        pytest.skip("PYTEST_DEADLINE passed: the scripted run's time is up")
