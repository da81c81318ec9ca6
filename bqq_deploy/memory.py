"""Peak resident memory (RSS) of this process, per stage of a job: Linux keeps the peak
(VmHWM) and lets a process reset it to the current RSS (/proc/self/clear_refs, value 5);
elsewhere the peak is getrusage's, since the process started."""

from __future__ import annotations

import resource
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

_STATUS, _CLEAR = Path("/proc/self/status"), Path("/proc/self/clear_refs")


def peak_rss_mib() -> float:
    """The peak RSS since the last reset_peak (or the process start), in MiB."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def reset_peak() -> bool:
    """Start a new peak at the current RSS; False where the system does not allow it."""
    try:
        _CLEAR.write_text("5")
        return True
    except OSError:
        return False


class Stages:
    """Wall time (s) and peak RSS (MiB) of each named stage of a job, in order; a stage
    entered several times (one per group of layers) adds its times and keeps its top peak."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.peak_rss_mib: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        reset_peak()
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
            self.peak_rss_mib[name] = max(self.peak_rss_mib.get(name, 0.0), round(peak_rss_mib(), 1))
