"""bqq-export as a process (issue 17): killed with SIGKILL at any point it leaves the old
bundle or a complete new one, never a partial one, and the rerun writes the same bytes as an
uninterrupted run; the same model, settings and seed give byte-identical bundles, from a cold
solver cache and from a warm one.

Bundles are compared file by file, byte for byte, except report.json / report.md, which
record run times, whether a layer came from the cache and how many layers it was solved with
(see comparable_report)."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from bqq_deploy import load_layers
from bqq_deploy.bundle import Bundle

MODEL = Path(__file__).resolve().parents[1] / "models" / "digits_vit.pt"
# The fast preset without the latency benchmark: ~4 s per export on a 2-core CPU.
SETTINGS = ["--quality", "fast", "--seed", "0", "--no-validate"]
BUNDLE_FILES = {Bundle.PORTABLE_ONNX, Bundle.PORTABLE_ONNX_FP16, Bundle.TRT_ONNX, Bundle.TRT_ONNX_FP16,
                Bundle.LAYERS, Bundle.WEIGHTS, Bundle.REPORT, Bundle.REPORT_MD}


def export_command(out: Path, cache: Path | None) -> list[str]:
    script = shutil.which("bqq-export", path=str(Path(sys.executable).parent))
    command = [script] if script else [sys.executable, "-m", "bqq_deploy.cli.export"]
    cache_args = ["--no-cache"] if cache is None else ["--cache-dir", str(cache)]
    return [*command, str(MODEL), "-o", str(out), *SETTINGS, *cache_args, "--force"]


def export(*jobs: tuple[Path, Path | None]) -> None:
    """Run one export per (out, cache) job, at the same time (they share nothing)."""
    procs = [subprocess.Popen(export_command(out, cache), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for out, cache in jobs]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err.decode(errors="replace")[-2000:]


def comparable_report(report: dict) -> dict:
    """report.json without what legitimately differs between runs of the same export: the
    phase timings and peak memory, each layer's solve time, whether it came from the cache and
    how many layers shared its solver batch (a resumed run solves only the layers not cached
    yet)."""
    report = json.loads(json.dumps(report))
    report.pop("timings_s")
    report.pop("peak_rss_mib")
    for layer in report["layers"]:
        for key in ("seconds", "cache_hit", "batch_layers"):
            layer["solver"].pop(key)
    return report


def assert_same_bundle(got: Path, want: Path) -> None:
    assert {p.name for p in got.iterdir()} == BUNDLE_FILES
    for name in BUNDLE_FILES - {"report.json", "report.md"}:
        assert (got / name).read_bytes() == (want / name).read_bytes(), f"{name} differs"
    got_report, want_report = (json.loads((d / "report.json").read_text()) for d in (got, want))
    assert comparable_report(got_report) == comparable_report(want_report)
    # report.md: only the line of phase timings may differ.
    untimed = [[line for line in (d / "report.md").read_text().splitlines() if not line.startswith("- time: ")]
               for d in (got, want)]
    assert untimed[0] == untimed[1]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """An uninterrupted export from a cold cache."""
    root = tmp_path_factory.mktemp("reference")
    export((root / "bundle", root / "cache"))
    report = json.loads((root / "bundle" / "report.json").read_text())
    assert not any(layer["solver"]["cache_hit"] for layer in report["layers"])
    return root


def test_same_seed_gives_byte_identical_bundles(reference, tmp_path):
    # --no-cache: every layer solved again; and every layer from the reference's cache.
    export((tmp_path / "cold", None), (tmp_path / "warm", reference / "cache"))
    assert_same_bundle(tmp_path / "cold", reference / "bundle")
    report = json.loads((tmp_path / "warm" / "report.json").read_text())
    assert all(layer["solver"]["cache_hit"] for layer in report["layers"])
    assert_same_bundle(tmp_path / "warm", reference / "bundle")


class Export:
    """A bqq-export process whose stderr (the progress bar) is watched."""

    def __init__(self, out: Path, cache: Path):
        self.proc = subprocess.Popen(export_command(out, cache), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        self.stderr = b""
        self.solving = threading.Event()
        threading.Thread(target=self._watch, daemon=True).start()

    def _watch(self) -> None:
        while chunk := os.read(self.proc.stderr.fileno(), 4096):
            self.stderr += chunk
            if b"BQQ" in self.stderr:  # the solver's progress bar: solving has started
                self.solving.set()
        self.solving.set()  # the process ended

    def kill(self) -> bool:
        """SIGKILL; False when the process had already finished."""
        if self.proc.poll() is not None:
            return False
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        return True


def wait_until(condition, process: Export, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and process.proc.poll() is None:
        assert time.monotonic() < deadline, "bqq-export never reached the kill point"
        time.sleep(0.002)


def snapshot(directory: Path) -> dict[str, bytes] | None:
    if not directory.exists():
        return None
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def test_kill_9_anywhere_leaves_old_or_complete_bundle_and_rerun_matches(reference, tmp_path):
    out, cache = tmp_path / "bundle", tmp_path / "cache"
    out.mkdir()
    (out / "model.onnx").write_bytes(b"the previous bundle")
    (out / "report.json").write_text("{}")
    old = snapshot(out)
    rng = random.Random(17)
    cached = lambda: set(cache.glob("*.bqq.json"))  # noqa: E731 - each layer's first file
    # Kill points, in this order so that each is reached: a seeded moment of the solve
    # (after its progress bar appears; nothing is cached yet); as soon as one more finished
    # layer reaches the cache (a partial cache the next run resumes from); a seeded moment
    # after the bundle's temporary directory appears (bundle files written and checked).
    kill_points = {
        "solving": lambda run, before: (run.solving.wait(), time.sleep(rng.uniform(0.0, 0.3))),
        "cache writes": lambda run, before: wait_until(lambda: cached() - before, run),
        "bundle writes": lambda run, before: (wait_until(lambda: any(tmp_path.glob(".bundle.*.tmp")), run),
                                              time.sleep(rng.uniform(0.0, 0.15))),
    }
    killed = []
    for point, reach in kill_points.items():
        before = cached()
        run = Export(out, cache)
        reach(run, before)
        if run.kill():
            killed.append(point)
        else:
            assert run.proc.returncode == 0, run.stderr.decode(errors="replace")[-2000:]
        state = snapshot(out)
        if state != old:  # the only other acceptable state: the complete new bundle
            assert state is not None, f"killed during {point}: the output directory is gone"
            assert_same_bundle(out, reference / "bundle")
            old = state
        for entry in cache.glob("*.bqq.safetensors"):  # each cache entry whole or absent
            load_layers(entry)
        # Leftovers of a killed run are hidden temporary entries beside OUT, never OUT itself.
        assert all(p.name.startswith(".bundle.") for p in tmp_path.iterdir() if p.name not in ("bundle", "cache"))
    assert killed, "every export finished before its kill point: the test killed nothing"
    export((out, cache))
    assert_same_bundle(out, reference / "bundle")
