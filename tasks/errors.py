"""gdflow's errors: what went wrong, and the exit code each kind of failure ends a command with."""

from __future__ import annotations

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


class GdflowError(Exception):
    """A failure gdflow can explain in one line; the message names the problem and the fix."""

    exit_code = EXIT_FAILED


class InputError(GdflowError, ValueError):
    """A request that cannot be carried out as given: a bad option, parameter or data file."""

    exit_code = EXIT_BAD_INPUT


class BrokenEnvironment(GdflowError):
    """The machine, not the request, is at fault: a server, a directory, the disk."""


class CorruptFileError(GdflowError):
    """A stored file's content does not match the hash recorded when it was written."""


class RunTimeout(GdflowError, TimeoutError):
    """A stage of a flow run went on past the time limit sized from its work."""
