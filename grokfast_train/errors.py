"""The two kinds of failure a user can meet, and the exit codes the CLI gives them.

Raise these with one line that says what was wrong and what to do instead; the CLI prints
that line to stderr without a traceback.
"""


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
