"""What the user sees while a run goes: a rich progress bar with live accuracies, or plain lines.

The bar is redrawn at most ten times a second from host-side counters only, so showing it
never synchronises with the device; accuracies change at eval points.
"""

from __future__ import annotations

import sys
import time

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)


def format_eval(row: dict, total_steps: int) -> str:
    return (f"step {row['step']:>{len(str(total_steps))}}/{total_steps}  "
            f"train_acc {row['train_acc']:.4f}  train_loss {row['train_loss']:.4g}  "
            f"test_acc {row['test_acc']:.4f}  test_loss {row['test_loss']:.4g}  "
            f"|w| {row['weight_norm']:.4g}  {row['elapsed_s']:.1f}s")


class Reporter:
    """Plain lines when quiet or not on a terminal; otherwise a live bar."""

    def __init__(self, total_steps: int, start_step: int, quiet: bool, title: str, printer=print):
        self.total = total_steps
        self._printer = printer  # where plain lines go (a sweep sends each run's to its log file)
        self.console = Console(stderr=False)
        self.live = not quiet and sys.stdout.isatty()
        self._last_draw = 0.0
        self._progress: Progress | None = None
        if self.live:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(bar_width=16), MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"), TextColumn("{task.fields[metrics]}"),
                TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(compact=True),
                console=self.console, refresh_per_second=10)
            self._task = self._progress.add_task(title, total=total_steps, completed=start_step,
                                                 rate="", metrics="")
            self._progress.start()

    def print(self, message: str) -> None:
        if self._progress is not None:
            self._progress.console.print(message, highlight=False)
        elif self._printer is print:
            print(message, flush=True)
        else:
            self._printer(message)

    def step(self, step: int, steps_per_s: float) -> None:
        if self._progress is None:
            return
        now = time.monotonic()
        if now - self._last_draw >= 0.1 or step == self.total:
            self._last_draw = now
            self._progress.update(self._task, completed=step, rate=f"{steps_per_s:,.0f} it/s")

    def eval(self, row: dict) -> None:
        if self._progress is None:
            self.print(format_eval(row, self.total))
            return
        # (the step is the bar's own, from ``step``: an evaluation's output may come after later steps are queued)
        self._progress.update(self._task, metrics=f"train {row['train_acc']:.3f} test {row['test_acc']:.3f}")

    def note(self, step: int, text: str) -> None:
        """An evaluation summarised in ``text`` (a pack's spread over its runs): the bar's metrics, or a line."""
        if self._progress is None:
            self.print(f"step {step:>{len(str(self.total))}}/{self.total}  {text}")
            return
        self._progress.update(self._task, metrics=text)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
