"""Ctrl-C as a flag: the first one asks the loop to stop at its next safe point, a second stops now.

A training loop checks the flag between steps (so a checkpoint is never half a step); a sweep
checks it between runs (so nothing new starts). Flags nest: a Ctrl-C taken by a run's flag is passed
on to the sweep's when the run's ends, even if the run then finished normally (it was at its end).
"""

from __future__ import annotations

import signal


class StopFlag:
    def __init__(self):
        self.set = False
        self._previous = None

    def _handle(self, signum, frame):
        if self.set:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.set = True

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread (e.g. inside a test runner thread): no handler
            self._previous = None
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            outer = getattr(self._previous, "__self__", None)
            if self.set and isinstance(outer, StopFlag):
                outer.set = True
