"""The project's own exceptions. The CLI turns each into one line naming the file and the problem.

InputError (exit 2): something the user gave is wrong or damaged (a config, a file, a folder).
RunFailure (exit 1): the inputs were fine but the work could not finish (a gate refused, a sweep aborted).
`kssgan --debug …` shows the traceback instead.
"""

from __future__ import annotations

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1


class KssganError(Exception):
    exit_code = EXIT_FAILED


class InputError(KssganError, ValueError):
    """A config, file or folder given to a stage is wrong, damaged or of another kind; names it."""

    exit_code = EXIT_BAD_INPUT


class RunFailure(KssganError, RuntimeError):
    """A stage could not finish although its inputs were valid."""

    exit_code = EXIT_FAILED
