"""What --jobs auto sizes its workers by: cores and memory as the process's cgroup limits them (v2 and
v1 layouts, written as files here the way the kernel shows them), and the worker count built on them."""

import os

import pytest

from grokfast_train import resources, sweep

GiB = 1 << 30


@pytest.fixture
def fake_system(tmp_path, monkeypatch):
    """Point the probes at a tree under tmp_path; returns a writer of its files."""
    monkeypatch.setattr(resources, "CGROUP_ROOT", tmp_path / "cgroup")
    monkeypatch.setattr(resources, "PROC_CGROUP", tmp_path / "proc-self-cgroup")
    monkeypatch.setattr(resources, "MEMINFO", tmp_path / "meminfo")
    (tmp_path / "meminfo").write_text(f"MemTotal:  {64 * GiB // 1024} kB\nMemAvailable:  {20 * GiB // 1024} kB\n")

    def write(rel: str, text: str) -> None:
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return write


def affinity() -> int:
    return len(os.sched_getaffinity(0))


def test_no_cgroup_files_leave_the_affinity_and_memavailable(fake_system):
    assert resources.cores() == affinity() and resources.available_memory() == 20 * GiB


def test_a_v2_quota_and_limit_cap_cores_and_memory(fake_system):
    fake_system("proc-self-cgroup", "0::/job\n")
    fake_system("cgroup/job/cpu.max", "150000 100000\n")  # 1.5 cores' worth: 2 busy workers at most
    fake_system("cgroup/job/memory.max", f"{4 * GiB}\n")
    fake_system("cgroup/job/memory.current", f"{1 * GiB}\n")
    assert resources.cores() == min(affinity(), 2) and resources.available_memory() == 3 * GiB
    fake_system("cgroup/job/cpu.max", "max 100000\n")
    fake_system("cgroup/job/memory.max", "max\n")
    assert resources.cores() == affinity() and resources.available_memory() == 20 * GiB


def test_a_v1_container_sees_its_own_cgroup_at_the_controller_root(fake_system):
    # the host's path in /proc/self/cgroup does not exist in the container's view: the root holds its files
    fake_system("proc-self-cgroup", "4:memory:/docker/abc\n2:cpu,cpuacct:/docker/abc\n0::/\n")
    fake_system("cgroup/cpu,cpuacct/cpu.cfs_quota_us", "100000\n")
    fake_system("cgroup/cpu,cpuacct/cpu.cfs_period_us", "100000\n")
    fake_system("cgroup/memory/memory.limit_in_bytes", f"{8 * GiB}\n")
    fake_system("cgroup/memory/memory.usage_in_bytes", f"{2 * GiB}\n")
    assert resources.cores() == 1 and resources.available_memory() == 6 * GiB
    fake_system("cgroup/cpu,cpuacct/cpu.cfs_quota_us", "-1\n")
    fake_system("cgroup/memory/memory.limit_in_bytes", "9223372036854771712\n")  # v1's "no limit"
    assert resources.cores() == affinity() and resources.available_memory() == 20 * GiB


def test_jobs_auto_takes_the_fewest_of_runs_cores_and_memory(monkeypatch):
    monkeypatch.setattr(resources, "cores", lambda: 16)
    monkeypatch.setattr(resources, "available_memory", lambda: 9 * GiB)
    assert sweep.auto_jobs(100, None, on_cuda=False) == 4  # memory: a worker per 2 GiB
    assert sweep.auto_jobs(3, None, on_cuda=False) == 3  # the work
    assert sweep.auto_jobs(100, 8, on_cuda=False) == 2  # --threads-per-run 8 on 16 cores
    assert sweep.auto_jobs(100, None, on_cuda=True) == 1  # packs share a GPU, not workers
    monkeypatch.setattr(resources, "available_memory", lambda: 1 * GiB)
    assert sweep.auto_jobs(100, None, on_cuda=False) == 1  # never 0
