"""loop.drive, the host schedule both a run and a pack use, on a stand-in run that counts steps: where it
evaluates and checkpoints, and what a Ctrl-C does -- a real SIGINT, taken by the real StopFlag."""

import signal
from types import SimpleNamespace

import pytest

from grokfast_train import loop
from grokfast_train.interrupt import StopFlag


class Counter:
    """Steps only; ``ctrl_c_at`` sends this process a SIGINT when a replay ends on that step."""

    def __init__(self, steps=100, eval_every=10, checkpoint_every=50, ctrl_c_at=None):
        self.cfg = SimpleNamespace(steps=steps, eval_every=eval_every, checkpoint_every=checkpoint_every)
        self.sampler = SimpleNamespace(steps_to_epoch=lambda step: None)
        self.step, self.ctrl_c_at = 0, ctrl_c_at

    def advance(self, limit):
        self.step += limit
        if self.step == self.ctrl_c_at:
            signal.raise_signal(signal.SIGINT)
        return limit


class Quiet:
    def step(self, *a):
        pass


def drive(run, stop_at=None):
    """drive() with live() false from the eval at ``stop_at`` on (an early stop); returns
    (interrupted, evals, saves)."""
    evals, saves = [], []
    interrupted, _ = loop.drive(run, Quiet(), record=lambda now: evals.append(run.step),
                                save=lambda now: saves.append(run.step), check_finite=lambda: None,
                                live=lambda: stop_at is None or not evals or evals[-1] < stop_at)
    return interrupted, evals, saves


def test_evaluations_and_checkpoints_fall_on_their_steps():
    interrupted, evals, saves = drive(Counter(steps=95))
    assert not interrupted and evals == [10, 20, 30, 40, 50, 60, 70, 80, 90, 95] and saves == [50, 95]


def test_an_early_stop_ends_with_a_checkpoint_at_the_stop():
    interrupted, evals, saves = drive(Counter(), stop_at=40)
    assert not interrupted and evals == [10, 20, 30, 40] and saves == [40]


def test_a_ctrl_c_checkpoints_and_interrupts_but_not_at_the_stop_and_reaches_the_outer_flag():
    interrupted, evals, saves = drive(Counter(ctrl_c_at=30))
    assert interrupted and evals == [10, 20, 30] and saves == [30]
    # a Ctrl-C on the step where the run stops anyway: it finished, so it is not interrupted -- but the
    # Ctrl-C was the user's: the enclosing flag (a sweep's) gets it, and starts no other run
    with StopFlag() as outer:
        interrupted, evals, saves = drive(Counter(ctrl_c_at=40), stop_at=40)
    assert not interrupted and saves == [40] and outer.set
    with StopFlag() as outer:
        drive(Counter())
    assert not outer.set


def test_a_second_ctrl_c_stops_at_once():
    with pytest.raises(KeyboardInterrupt):
        with StopFlag():
            signal.raise_signal(signal.SIGINT)
            signal.raise_signal(signal.SIGINT)


class Logged(Counter):
    """Counter that logs its steps, and fails on ``fail_at``."""

    def __init__(self, events, fail_at=None, **kw):
        super().__init__(**kw)
        self.events, self.fail_at = events, fail_at

    def advance(self, limit):
        if self.step + limit == self.fail_at:
            raise RuntimeError("device error")
        n = super().advance(limit)
        self.events.append(("advance", self.step))
        return n


def _logged_drive(run, events):
    def record(now):
        step = run.step
        events.append(("record", step))
        return lambda: events.append(("output", step))

    return loop.drive(run, Quiet(), record=record, save=lambda now: events.append(("save", run.step)),
                      check_finite=lambda: None)


def test_an_evaluations_output_is_written_once_the_next_steps_are_queued_and_before_a_checkpoint():
    events = []
    _logged_drive(Logged(events, steps=50, checkpoint_every=30), events)
    assert events == [("advance", 10), ("record", 10),
                      ("advance", 20), ("output", 10), ("record", 20),
                      ("advance", 30), ("output", 20), ("record", 30), ("output", 30), ("save", 30),
                      ("advance", 40), ("record", 40),
                      ("advance", 50), ("output", 40), ("record", 50), ("output", 50), ("save", 50)]


def test_an_evaluations_output_is_written_when_the_next_steps_fail():
    events = []
    with pytest.raises(RuntimeError, match="device error"):
        _logged_drive(Logged(events, fail_at=30), events)
    assert events[-2:] == [("record", 20), ("output", 20)]


def test_an_output_that_fails_while_an_error_is_in_flight_does_not_hide_it():
    events = []
    run = Logged(events, fail_at=30)

    def record(now):
        def output():
            raise OSError("disk full")
        return output if run.step == 20 else None  # pending when the steps to 30 fail

    with pytest.raises(RuntimeError, match="device error"):
        loop.drive(run, Quiet(), record=record, save=lambda now: None, check_finite=lambda: None)
    run = Logged([], steps=30)
    with pytest.raises(OSError, match="disk full"):  # with nothing else in flight, the output's own error
        loop.drive(run, Quiet(), record=record, save=lambda now: None, check_finite=lambda: None)
