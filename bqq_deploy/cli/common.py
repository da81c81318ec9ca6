"""What every bqq-* command shares: one-line errors with exit code 2 for bad input, exit 1
for a failed check, logging set by --quiet / --verbose."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable

from ..engine import EngineBuildFailed, EngineError, EngineMismatch
from ..format import FormatError

EXIT_OK = 0
EXIT_FAILED_CHECK = 1
EXIT_BAD_INPUT = 2


class UsageError(Exception):
    """Bad input from the user: reported as one line, exit code 2."""


class CheckFailed(Exception):
    """The job ran but a check (tolerance, compatibility) failed: exit code 1."""


def add_verbosity(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-q", "--quiet", action="store_true", help="print errors only, no progress bars")
    group.add_argument("-v", "--verbose", action="store_true", help="print debug details")


def configure_logging(args: argparse.Namespace) -> None:
    level = logging.ERROR if getattr(args, "quiet", False) else (
        logging.DEBUG if getattr(args, "verbose", False) else logging.INFO)
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr, force=True)


def run(prog: str, handler: Callable[[argparse.Namespace], int | None],
        parser: argparse.ArgumentParser, argv: list[str] | None = None) -> int:
    """Parse argv, run handler, map exceptions to exit codes with a one-line message."""
    args = parser.parse_args(argv)
    configure_logging(args)
    try:
        return handler(args) or EXIT_OK
    except (CheckFailed, EngineMismatch, EngineBuildFailed) as exc:
        print(f"{prog}: check failed: {_one_line(exc)}", file=sys.stderr)
        return EXIT_FAILED_CHECK
    except (UsageError, FormatError, EngineError, FileNotFoundError, NotADirectoryError,
            IsADirectoryError, PermissionError) as exc:  # EngineError: TensorRT/GPU/plugin missing
        print(f"{prog}: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


def _one_line(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    if isinstance(exc, OSError) and exc.filename and exc.strerror:
        text = f"{exc.strerror}: {exc.filename}"
    return " ".join(text.split())
