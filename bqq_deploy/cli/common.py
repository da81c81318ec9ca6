"""What every bqq-* command shares: the library's errors mapped to exit codes (2 bad input,
1 a failed check) with a one-line message, and logging set by --quiet / --verbose."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable

from ..errors import EXIT_FAILED_CHECK, EXIT_OK, exit_code


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
    """Parse argv, run handler, map the library's errors to exit codes with one line."""
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
            raise
        kind = "check failed" if code == EXIT_FAILED_CHECK else "error"
        print(f"{prog}: {kind}: {_one_line(exc)}", file=sys.stderr)
        return code


def _one_line(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    if isinstance(exc, OSError) and exc.filename and exc.strerror:
        text = f"{exc.strerror}: {exc.filename}"
    return " ".join(text.split())
