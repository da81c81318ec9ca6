"""Latency of one back end: warm-up, then per-iteration times of its execute step (inputs are
already on the device, outputs stay there), timed with CUDA events on a GPU and
time.perf_counter on the CPU."""

from __future__ import annotations

import resource
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from ..errors import InputError
from .base import Backend


@dataclass
class LatencyResult:
    backend: str
    device: str
    batch_size: int
    samples_ms: list[float] = field(repr=False)
    peak_memory_mb: float
    memory_source: str  # "torch.cuda.max_memory_allocated" or "process peak RSS"

    def _pct(self, q: float) -> float:
        return float(np.percentile(self.samples_ms, q))

    @property
    def p50_ms(self) -> float:
        return self._pct(50)

    @property
    def p90_ms(self) -> float:
        return self._pct(90)

    @property
    def p99_ms(self) -> float:
        return self._pct(99)

    @property
    def mean_ms(self) -> float:
        return float(np.mean(self.samples_ms))

    @property
    def throughput(self) -> float:
        """Samples per second at the median latency."""
        return 1000.0 * self.batch_size / self.p50_ms if self.p50_ms > 0 else float("inf")

    def to_dict(self) -> dict:
        return {"backend": self.backend, "device": self.device, "batch_size": self.batch_size,
                "iters": len(self.samples_ms), "p50_ms": self.p50_ms, "p90_ms": self.p90_ms,
                "p99_ms": self.p99_ms, "mean_ms": self.mean_ms,
                "throughput_samples_per_s": self.throughput, "peak_memory_mb": self.peak_memory_mb,
                "memory_source": self.memory_source, "samples_ms": list(self.samples_ms)}


def benchmark(backend: Backend, feeds: dict[str, np.ndarray], *, warmup: int = 10,
              iters: int = 100) -> LatencyResult:
    """Time backend.execute on feeds: warmup untimed runs, then iters timed ones."""
    if iters < 1 or warmup < 0:
        raise InputError(f"need iters >= 1 and warmup >= 0, got {iters}, {warmup}")
    first = next(iter(feeds.values()), None)
    batch = int(first.shape[0]) if first is not None and np.ndim(first) > 0 else 1
    gpu = backend.device == "cuda" and _torch_cuda()
    prepared = backend.prepare(feeds)
    if gpu:
        import torch

        torch.cuda.reset_peak_memory_stats()
    for _ in range(warmup):
        backend.execute(prepared)
    samples = _time_cuda(backend, prepared, iters) if gpu else _time_cpu(backend, prepared, iters)
    if gpu:
        import torch

        peak, source = torch.cuda.max_memory_allocated() / 2**20, "torch.cuda.max_memory_allocated"
    else:
        peak, source = _peak_rss_mb(), "process peak RSS"
    return LatencyResult(backend.name, backend.device, batch, samples, peak, source)


def _torch_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def _time_cuda(backend: Backend, prepared, iters: int) -> list[float]:
    import torch

    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
              for _ in range(iters)]
    torch.cuda.synchronize()
    for start, end in events:
        start.record()
        backend.execute(prepared)
        end.record()
    torch.cuda.synchronize()
    return [start.elapsed_time(end) for start, end in events]


def _time_cpu(backend: Backend, prepared, iters: int) -> list[float]:
    samples = []
    for _ in range(iters):
        start = time.perf_counter()
        backend.execute(prepared)
        samples.append((time.perf_counter() - start) * 1000.0)
    return samples


def _peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux
