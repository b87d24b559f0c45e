"""Programmatic dependent launch (kernels/_pdl.py) on a real GPU: it changes no number.

With PDL every kernel may be scheduled while the one before it finishes, and waits for it
(griddepcontrol.wait) before touching memory -- kernels._compile checks in each PDL build's PTX that the
wait comes first. Here: the same runs with and without it give the same metrics and weights. The
kernels, their order and their arithmetic are the same, so any difference is a kernel that read or
wrote before its wait, racing with the kernel ahead of it. (A race need not show in every run: these
are a check, the PTX rule is the guard.) The last file of scripts/gpu_check.sh's CUDA tests, so that a
time cap cuts these first. Skipped without CUDA, under TRITON_INTERPRET=1, and below sm_90.
"""

import pytest
import torch

from kernels._dispatch import INTERPRET

pytestmark = pytest.mark.skipif(not torch.cuda.is_available() or INTERPRET
                                or torch.cuda.get_device_capability()[0] < 9,
                                reason="needs CUDA of compute capability 9.0 or more, TRITON_INTERPRET unset")

from grokfast_train.cli import main  # noqa: E402
from kernels import set_pdl  # noqa: E402
from kernels._pdl import pdl  # noqa: E402
from tests.gpu.test_graph_cuda import SMALL, _rows, _same_rows, _same_weights, _weights  # noqa: E402
from tests.gpu.test_pack_cuda import RUNS, SAME, assert_close_rows, pack  # noqa: E402


def _with_pdl(fn):
    previous = set_pdl(True)
    try:
        return fn()
    finally:
        set_pdl(previous)


def test_the_switch_gives_the_launch_keywords_on_this_gpu():
    x = torch.zeros(1, device="cuda")
    assert pdl(x) == {} and _with_pdl(lambda: pdl(x)) == {"PDL": True, "launch_pdl": True}


def test_a_run_is_the_same_with_and_without_pdl(tmp_path):
    """A captured modular run (in a graph the kernels follow each other closest: where a race would show);
    shuffled batches of 32 (epochs that the replays do not divide), Grokfast on, a ragged evaluation chunk."""
    args = [*SMALL, "--steps", "60", "--cuda-graph", "on", "--order", "shuffle", "--batch-size", "32",
            "--grokfast-alpha", "0.9"]
    assert main([*args, "--out", str(tmp_path / "plain")]) == 0
    assert _with_pdl(lambda: main([*args, "--out", str(tmp_path / "pdl")])) == 0
    _same_rows(_rows(tmp_path / "plain"), _rows(tmp_path / "pdl"))
    _same_weights(_weights(tmp_path / "plain"), _weights(tmp_path / "pdl"))


def test_a_pack_is_the_same_with_and_without_pdl(tmp_path):
    """Three runs of different sizes and settings as one captured pack."""
    pack(tmp_path, "plain", RUNS, cuda_graph="on")
    _with_pdl(lambda: pack(tmp_path, "pdl", RUNS, cuda_graph="on"))
    for i in range(len(RUNS)):
        assert_close_rows(tmp_path / f"plain{i}", tmp_path / f"pdl{i}", SAME)
