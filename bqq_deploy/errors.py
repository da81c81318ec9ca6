"""The library's error types. Every stage raises these; only the command-line layer
(bqq_deploy.cli) turns them into exit codes: 2 for bad input, 1 for a failed check.

    BQQError
    +-- InputError          bad input: a file, flag, shape or tensor the user gave (exit 2)
    |   +-- FormatError     data that violates docs/FORMAT.md
    +-- EngineError         TensorRT, a GPU or the plugin library is missing or unusable (exit 2)
    |   +-- EngineBuildFailed   TensorRT could not parse or build the network (exit 1)
    |   +-- EngineMismatch      an engine built for another TensorRT, GPU or plugin (exit 1)
    +-- CheckFailed         the job ran but a tolerance or compatibility check failed (exit 1)

InputError and FormatError are also ValueErrors, so code that catches ValueError keeps working.
"""

from __future__ import annotations


class BQQError(Exception):
    """Base of every error bqq-deploy raises on purpose."""


class InputError(BQQError, ValueError):
    """Bad input from the user, reported as one line naming the problem."""


class FormatError(InputError):
    """A BQQ tensor or file that violates docs/FORMAT.md."""


class EngineError(BQQError):
    """TensorRT is missing, a GPU or the plugin library is unusable, or an engine file is."""


class EngineBuildFailed(EngineError):
    """TensorRT could not parse the ONNX file or build the engine."""


class EngineMismatch(EngineError):
    """An engine does not match this device, TensorRT version or plugin library."""


class CheckFailed(BQQError):
    """The job ran but a check (tolerance, compatibility) failed."""


# Exit status of the command-line tools per error type, most specific first.
EXIT_OK = 0
EXIT_FAILED_CHECK = 1
EXIT_BAD_INPUT = 2
EXIT_CODES: tuple[tuple[type[BaseException], int], ...] = (
    (CheckFailed, EXIT_FAILED_CHECK),
    (EngineMismatch, EXIT_FAILED_CHECK),
    (EngineBuildFailed, EXIT_FAILED_CHECK),
    (BQQError, EXIT_BAD_INPUT),
    # A path the user named that cannot be read or written.
    (FileNotFoundError, EXIT_BAD_INPUT),
    (NotADirectoryError, EXIT_BAD_INPUT),
    (IsADirectoryError, EXIT_BAD_INPUT),
    (PermissionError, EXIT_BAD_INPUT),
)


def exit_code(exc: BaseException) -> int | None:
    """The exit status for exc, or None for an unexpected error (a bug: let it raise)."""
    for kind, code in EXIT_CODES:
        if isinstance(exc, kind):
            return code
    return None
