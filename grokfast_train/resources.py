"""What this process may use of the machine: cores and memory, as a container or taskset limits them.

``sweep --jobs auto`` sizes its workers by these. The host's counts are not enough: a container with a
CPU quota (``docker --cpus``, a Kubernetes limit) sees every host core in ``os.cpu_count()`` and its
affinity, and the host's MemAvailable in /proc/meminfo. So both are capped by the process's cgroup
(v2's unified files, or v1's cpu and memory controllers), when there is one.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")  # which cgroup this process is in, per controller
MEMINFO = Path("/proc/meminfo")
UNLIMITED = 1 << 62


def cores() -> int:
    """The cores this process may keep busy: its affinity, capped by a CPU quota."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = _cpu_quota()
    return max(1, min(n, math.ceil(quota))) if quota else n


def available_memory() -> int:
    """Bytes this process can still allocate without swapping: MemAvailable, capped by what is left
    under a cgroup memory limit; unknown: no limit."""
    total = _meminfo_available()
    limit = _memory_left()
    return min(total, limit) if limit is not None else total


def _cgroup_dirs(controller: str) -> list[Path]:
    """Where this process's cgroup files for ``controller`` live: v1's controller directory, or v2's
    unified one (its own path first, then the root, which a container's namespace shows as its own)."""
    dirs = []
    try:
        lines = PROC_CGROUP.read_text().splitlines()
    except OSError:
        return dirs
    for line in lines:
        _, controllers, path = line.split(":", 2)
        names = controllers.split(",")
        if controller in names:  # v1, e.g. "4:memory:/docker/abc" or "2:cpu,cpuacct:/"
            base = CGROUP_ROOT / controllers
            base = base if base.is_dir() else CGROUP_ROOT / controller
            dirs += [base / path.lstrip("/"), base]
        elif controllers == "":  # v2, "0::/path"
            dirs += [CGROUP_ROOT / path.lstrip("/"), CGROUP_ROOT]
    return dirs


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _cpu_quota() -> float | None:
    """Cores' worth of CPU time the cgroup allows per period (None: no quota)."""
    for d in _cgroup_dirs("cpu"):
        v2 = _read(d / "cpu.max")  # "max 100000" or "200000 100000"
        if v2:
            quota, period = v2.split()
            return None if quota == "max" else int(quota) / int(period)
        quota, period = _read(d / "cpu.cfs_quota_us"), _read(d / "cpu.cfs_period_us")
        if quota and period:
            return None if int(quota) < 0 else int(quota) / int(period)
    return None


def _memory_left() -> int | None:
    """Bytes left under the cgroup's memory limit (None: no limit)."""
    for d in _cgroup_dirs("memory"):
        for limit_name, usage_name in (("memory.max", "memory.current"),
                                       ("memory.limit_in_bytes", "memory.usage_in_bytes")):
            limit, usage = _read(d / limit_name), _read(d / usage_name)
            if limit and usage:
                if limit == "max" or int(limit) >= UNLIMITED:  # v1 writes "no limit" as ~2^63
                    return None
                return max(0, int(limit) - int(usage))
    return None


def _meminfo_available() -> int:
    try:
        with open(MEMINFO) as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return UNLIMITED
