"""Ctrl-C in the middle of an eval interval, then --resume: the same rows and weights as a run never stopped.

The subprocess Ctrl-C test in test_run.py stops at the first log line, which is an eval boundary,
where the interval meter is empty; a resume that dropped the meter's partial sums (or the sampler's
position inside an epoch, or the Grokfast filter) would pass it. Here SIGINT is delivered for real
during step 15 of a run that evaluates every 10 steps, so the checkpoint is written by the
interrupt path of ``Run.fit`` with five steps of train metrics in the meter.
"""

import json
import os
import signal

import pytest
import torch

from grokfast_train.cli import config_from_args, main
from grokfast_train.metrics import IntervalMeter
from grokfast_train.train import Run

SMALL = ["--dataset", "modular", "--p", "23", "--hidden", "32", "--heads", "2", "--batch-size", "48",
         "--frac", "0.5", "--eval-every", "10", "--checkpoint-every", "10", "--quiet", "--device", "cpu",
         "--grokfast-alpha", "0.9"]
STOP_AT = 15


class _CtrlCAt(Run):
    """SIGINT to this process during step ``STOP_AT``, as a Ctrl-C at the terminal would be."""

    def train_step(self):
        super().train_step()
        if self.step + 1 == STOP_AT:
            os.kill(os.getpid(), signal.SIGINT)


def _rows(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for r in rows:
        r.pop("elapsed_s")
    return rows


def _weights(run_dir):
    return torch.load(run_dir / "checkpoint.pt", weights_only=True)["model"]


# shuffle with 48 of ~198 examples: the stop lands mid-epoch and the next epoch starts after the resume
@pytest.mark.parametrize("order", ["cyclic", "shuffle"])
def test_ctrl_c_mid_interval_resumes_exactly(tmp_path, order):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    args = [*SMALL, "--order", order, "--steps", "30"]
    assert main([*args, "--out", str(whole)]) == 0

    run = _CtrlCAt(config_from_args([*args, "--out", str(cut)]), log=lambda _: None)
    assert run.fit() is None  # interrupted
    state = torch.load(cut / "checkpoint.pt", weights_only=True)
    assert state["step"] == STOP_AT and [r["step"] for r in state["history"]] == [10]
    # the checkpoint holds a partial interval: steps 11..15 of train loss and accuracy
    meter = IntervalMeter(torch.device("cpu"))
    meter.load_state_dict(state["meter"])
    partial_loss, _ = meter.read_and_reset()
    assert partial_loss > 0

    assert main(["--out", str(cut), "--resume", "--quiet"]) == 0
    got, want = _rows(cut), _rows(whole)
    assert [r["step"] for r in got] == [10, 20, 30]
    for a, b in zip(got, want, strict=True):
        assert a == b, (a, b)  # exact: the interval 11..20 straddles the stop
    wa, wb = _weights(cut), _weights(whole)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    assert json.loads((cut / "summary.json").read_text())["final_step"] == 30
