"""Ctrl-C as a flag: the first one asks the loop to stop at its next safe point, a second stops now.

A training loop checks the flag between steps (so a checkpoint is never half a step); a sweep
checks it between runs (so nothing new starts). Flags nest: a Ctrl-C taken by a run's flag is passed
on to the sweep's when the run's ends, even if the run then finished normally (it was at its end).

A sweep's worker process holds a Ctrl-C that finds no flag up (``hold_interrupts``): it is idle, or its
run has not started its loop yet; every flag it raises afterwards starts set, so that run checkpoints
at its first host point and stops. Its sweep's death comes as SIGTERM (``stop_on_sigterm``), which only
ever asks for the graceful stop, however often it comes: the kernel has been seen to send it twice, and
a second Ctrl-C's "stop now" would abandon the checkpoint being written.
"""

from __future__ import annotations

import os
import signal


_held = False  # a SIGINT came while no StopFlag was up (hold_interrupts)
_up: list["StopFlag"] = []  # the flags up now, innermost last


def hold_interrupts() -> None:
    """From now on a SIGINT outside any StopFlag is held for every later one (a sweep's worker process)."""
    def hold(signum, frame) -> None:
        global _held
        _held = True

    signal.signal(signal.SIGINT, hold)


def stop_on_sigterm() -> None:
    """A SIGTERM asks the innermost flag up for a graceful stop (never "stop now", however often it
    comes), or, with no flag up (nothing training), ends this process at once."""
    def stop(signum, frame) -> None:
        if not _up:
            os._exit(143)
        _up[-1].set = True

    signal.signal(signal.SIGTERM, stop)


class StopFlag:
    def __init__(self):
        self.set = False
        self._previous = None

    def _handle(self, signum, frame):
        if self.set:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.set = True

    def __enter__(self):
        self.set = _held
        _up.append(self)
        try:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread (e.g. inside a test runner thread): no handler
            self._previous = None
        return self

    def __exit__(self, *exc):
        _up.remove(self)
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            outer = getattr(self._previous, "__self__", None)
            if self.set and isinstance(outer, StopFlag):
                outer.set = True
