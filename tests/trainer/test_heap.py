"""heap.keep_freed_memory: after it, the memory one step frees is reused by the next, not faulted in afresh.

Counted in fresh interpreters (the setting is process-wide, and other tests' runs set it), one with
the call made first and one without: the minor page faults of a stand-in for training steps --
tensors of 1 to 64 MiB allocated, filled and all freed, the same sizes every round. By default glibc
maps the blocks above its mmap threshold (at most 32 MiB) on their own and trims the heap's free top,
so most pages of every round fault in anew (81,900-130,000 of 198,400 here). When this test was
written, M_MMAP_MAX alone still left 51,000-82,000 faulting, M_TRIM_THRESHOLD alone all 198,400, both
together 0 -- or 6,144 in a third of the runs, where glibc's aligned blocks had not all settled.
"""

import os
import subprocess
import sys

import pytest

SCRIPT = """
import resource, sys, torch
from grokfast_train import heap

tuned = heap.keep_freed_memory() if sys.argv[1] == "tuned" else None

SIZES_MIB = [5, 64, 16, 2, 40, 8, 16, 3, 1]

def faults(rounds):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(rounds):
        step = [torch.empty(n << 20, dtype=torch.uint8) for n in SIZES_MIB]
        for t in step:
            t.fill_(1)
        del step, t
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

faults(20)  # torch's first allocations; glibc's aligned blocks settle on reusable places
print(tuned, faults(5), 5 * sum(SIZES_MIB) * (1 << 20) // resource.getpagesize())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_freed_tensors_are_reused_instead_of_faulted_in_again():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_TUNABLES"))}
    out = {}
    for mode in ("default", "tuned"):
        done = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True,
                              env=env)
        out[mode] = done.stdout.split()
    (untouched, default, pages), (tuned, after, _) = out["default"], out["tuned"]
    assert untouched == "None" and tuned == "True"
    assert int(default) > 0.25 * int(pages), out  # the default: a large part of every round faulted in anew
    assert int(after) < 0.1 * int(pages), out  # tuned: the same memory reused
