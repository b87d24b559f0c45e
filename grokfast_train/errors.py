"""The two kinds of failure a user can meet, and the exit codes the CLI gives them.

Raise these with one line that says what was wrong and what to do instead; the CLI prints
that line to stderr without a traceback (``one_line_errors``; ``OneLineParser`` for bad flags).
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable


class GrokfastError(Exception):
    exit_code = 1


class UsageError(GrokfastError):
    """The command line or configuration asks for something invalid (exit code 2)."""

    exit_code = 2


class RunError(GrokfastError):
    """The run could not proceed: missing data, unreachable hub, corrupt checkpoint, ... (exit code 1)."""

    exit_code = 1


class RunLocked(RunError):
    """Another process is training in this run directory (exit code 1)."""


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad command line as a UsageError: one line, exit 2, no usage dump."""

    def error(self, message: str):
        raise UsageError(f"{message} (see {self.prog} --help)")


def word_or_int(text: str, words: tuple[str, ...], expected: str, minimum: int | None = None) -> str | int:
    """An argparse value that is one of ``words`` or an integer (at least ``minimum``, if given); else
    the error "expected <expected>, got <text>"."""
    if text in words:
        return text
    try:
        n = int(text)
    except ValueError:
        n = None
    if n is None or (minimum is not None and n < minimum):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return n


def one_line_errors(prog: str, command: Callable[[], int]) -> int:
    """Run a command-line entry point: a GrokfastError or an OSError (disk full, permissions, ...)
    becomes one line on stderr and its exit code; anything else is a bug and keeps its traceback."""
    try:
        return command()
    except GrokfastError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return e.exit_code
    except OSError as e:
        print(f"{prog}: error: {e.strerror or e} ({e.filename or 'I/O'})", file=sys.stderr)
        return 1
