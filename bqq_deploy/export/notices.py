"""Warnings of one export, summarised once: Python warnings (torch.onnx, tqdm, numpy) and
WARNING log records (the fp16 clipping of bqq_deploy, torch's exporter) raised while it runs
are collected instead of printed one by one, grouped by message, and each group names what it
concerns (a tensor, a layer, a file). The summary goes to the report and the console."""

from __future__ import annotations

import logging
import re
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

# Messages that concern no model: torch's exporter on optional torchvision ops, and its notice
# that the TorchScript-based exporter (chosen on purpose for torch modules) is the legacy one.
IGNORED = (re.compile(r"torchvision is not installed"),
           re.compile(r"legacy TorchScript-based ONNX export"))
# At most this many subjects are named per message; the rest are counted.
MAX_SUBJECTS = 5


@dataclass
class _Group:
    message: str
    source: str
    subjects: list[str] = field(default_factory=list)
    count: int = 0


class Notices:
    """The warnings of one export, grouped by (source, message)."""

    def __init__(self):
        self._groups: dict[tuple[str, str], _Group] = {}

    def add(self, message: str, *, subject: str | None = None, source: str = "") -> None:
        message = " ".join(str(message).split())
        if not message or any(p.search(message) for p in IGNORED):
            return
        group = self._groups.setdefault((source, message), _Group(message, source))
        group.count += 1
        if subject and subject not in group.subjects:
            group.subjects.append(subject)

    def lines(self) -> list[str]:
        """One line per distinct warning: `source: message (concerns: a, b, ... +N more)`."""
        out = []
        for group in self._groups.values():
            text = f"{group.source}: {group.message}" if group.source else group.message
            if group.subjects:
                named = ", ".join(group.subjects[:MAX_SUBJECTS])
                more = len(group.subjects) - MAX_SUBJECTS
                text += f" (concerns {named}{f' and {more} more' if more > 0 else ''})"
            elif group.count > 1:
                text += f" ({group.count} times)"
            out.append(text)
        return out


class _Collector(logging.Handler):
    def __init__(self, notices: Notices):
        super().__init__(logging.WARNING)
        self.notices = notices

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR:
            return
        # A message "%s: text" names its subject in the first argument: group on the text.
        template, args = str(record.msg), record.args if isinstance(record.args, tuple) else ()
        if template.startswith("%s: ") and args:
            self.notices.add(template[4:] % args[1:] if len(args) > 1 else template[4:],
                             subject=str(args[0]), source=_source(record.name))
        else:
            self.notices.add(record.getMessage(), source=_source(record.name))


class _Quiet(logging.Filter):
    """Keeps WARNING records off the console while they are being collected."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno != logging.WARNING


def _source(logger_name: str) -> str:
    if logger_name.startswith("bqq_deploy.export.surgery"):
        return "fp16 file"
    if logger_name.startswith("bqq_deploy"):
        return "export"
    return logger_name.split(".")[0] if logger_name else ""


@contextmanager
def collecting(notices: Notices) -> Iterator[Notices]:
    """Collect the warnings raised inside the block into notices. Unless the root logger is at
    DEBUG (-v), WARNING records stay off the console until the summary."""
    root = logging.getLogger()
    collector = _Collector(notices)
    quiet = None if root.isEnabledFor(logging.DEBUG) else _Quiet()
    # The root logger, and every logger that prints through handlers of its own (torch's).
    owners = [root] + [logger for logger in logging.root.manager.loggerDict.values()
                       if isinstance(logger, logging.Logger) and logger.handlers
                       and not logger.propagate]
    handlers = [h for logger in owners for h in logger.handlers]
    for logger in owners:
        logger.addHandler(collector)
    if quiet is not None:
        for handler in handlers:
            handler.addFilter(quiet)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield notices
    finally:
        for logger in owners:
            logger.removeHandler(collector)
        if quiet is not None:
            for handler in handlers:
                handler.removeFilter(quiet)
    for item in caught:
        source = item.category.__module__.split(".")[0]
        source = "tqdm" if source == "tqdm" else _warning_source(item.filename, source)
        notices.add(str(item.message).strip().splitlines()[0] if str(item.message).strip() else
                    item.category.__name__, source=source)


def _warning_source(filename: str, fallback: str) -> str:
    """The package that raised a warning, from the file it points at."""
    match = re.search(r"site-packages/([A-Za-z0-9_]+)", filename or "")
    if match:
        return match.group(1) if match.group(1) != "torch" or "/onnx/" not in filename else "torch.onnx"
    return fallback if fallback != "builtins" else "python"
