"""What every bqq-* command shares: the library's errors mapped to exit codes (2 bad input,
1 a failed check) with a one-line message, and logging set by --quiet / --verbose."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable

from ..errors import EXIT_BAD_INPUT, EXIT_FAILED_CHECK, EXIT_OK, exit_code


def add_verbosity(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-q", "--quiet", action="store_true", help="print errors only, no progress bars")
    group.add_argument("-v", "--verbose", action="store_true", help="print debug details")


# Loggers whose INFO messages (progress of the steps) are shown by default.
OWN_LOGGERS = ("bqq_deploy", "bqq-export", "bqq-build", "bqq-validate", "bqq-demo")


def configure_logging(args: argparse.Namespace) -> None:
    """-q: errors only; default: this package's progress messages, other libraries' warnings
    (an export collects those into one summary); -v: everything, torch's exporter included."""
    quiet, verbose = getattr(args, "quiet", False), getattr(args, "verbose", False)
    root_level = logging.ERROR if quiet else logging.DEBUG if verbose else logging.WARNING
    logging.basicConfig(level=root_level, format="%(message)s", stream=sys.stderr, force=True)
    for name in OWN_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR if quiet else logging.DEBUG if verbose
                                         else logging.INFO)


# Exit status of an unexpected error: a bug, reported in one line (-v shows the traceback).
EXIT_INTERNAL = 3


def run(prog: str, handler: Callable[[argparse.Namespace], int | None],
        parser: argparse.ArgumentParser, argv: list[str] | None = None) -> int:
    """Parse argv, run handler, map the library's errors to exit codes with one line: 2 bad
    input (a bad flag included), 1 a failed check, 3 a bug (its traceback only with -v)."""
    parser.error = lambda message: parser.exit(  # type: ignore[method-assign]
        EXIT_BAD_INPUT, f"{prog}: error: {' '.join(message.split())} (see {prog} --help)\n")
    args = parser.parse_args(argv)
    configure_logging(args)
    try:
        return handler(args) or EXIT_OK
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        code = exit_code(exc)
        if code is None:
            if getattr(args, "verbose", False):
                raise
            print(f"{prog}: internal error: {type(exc).__name__}: {_one_line(exc)} (a bug: "
                  "rerun with -v for the traceback and report it)", file=sys.stderr)
            return EXIT_INTERNAL
        kind = "check failed" if code == EXIT_FAILED_CHECK else "error"
        print(f"{prog}: {kind}: {_one_line(exc)}", file=sys.stderr)
        return code


def _one_line(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    if isinstance(exc, OSError) and exc.filename and exc.strerror:
        text = f"{exc.strerror}: {exc.filename}"
    return " ".join(text.split())
