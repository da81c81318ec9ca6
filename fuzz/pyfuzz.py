"""Seeded mutation fuzzing of bqq_deploy's Python readers (targets in fuzz/targets.py).

    python fuzz/pyfuzz.py [TARGET ...] [--runs N] [--seed S] [--timeout SEC]
                          [--artifacts DIR] [--json FILE]
    python fuzz/pyfuzz.py --reproduce TARGET FILE     # one input, in this process, traceback
    python fuzz/pyfuzz.py --atheris TARGET [libFuzzer flags] CORPUS_DIR   # needs atheris

Cases run in a worker process with a memory limit and a per-case time limit, so a hang or a
crash (segfault in a C extension, out of memory) is recorded like an exception and the run
goes on with a fresh worker. Each target's seeds (fuzz/seeds.py) run first, then --runs
mutated cases: 1-4 stacked mutations of a seed or of an earlier input the reader accepted
(fuzz/mutators.py). Same --seed, same code: the same cases.

A finding is any exception other than the target's documented one, a wrong result from an
accepted input, a hang or a crash. Findings are grouped by signature (exception type and the
innermost bqq_deploy function) with one reproducer file each under --artifacts. Exit status:
0 no finding, 1 findings, 2 bad usage.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
import platform
import random
import select
import signal
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import mutators  # noqa: E402

TARGET_NAMES = ("safetensors", "npz", "input_shape", "onnx", "pt2", "sidecar", "manifest", "engine_build")



# --- worker side ----------------------------------------------------------------------------

def signature(exc: BaseException) -> str:
    """Exception type and where it left bqq_deploy (or the harness): stable across line
    edits in bqq_deploy, so one bug is one signature."""
    where = None
    for frame in traceback.extract_tb(exc.__traceback__):
        path = Path(frame.filename)
        if "bqq_deploy" in path.parts and not frame.name.startswith("<"):  # not <genexpr> etc.
            module = ".".join(path.with_suffix("").parts[path.parts.index("bqq_deploy"):])
            where = f"{module}.{frame.name}"
        elif where is None and path.name == "targets.py" and frame.name.startswith("run_"):
            where = f"targets.{frame.name}"
    return f"{type(exc).__name__} in {where or 'unknown'}"


def run_case(target: str, data: bytes, scratch: Path) -> dict:
    import targets

    calls = targets.Calls()
    try:
        targets.TARGETS[target].run(data, scratch, calls)
    except Exception as exc:  # noqa: BLE001 - every escaping exception is a finding
        return {"outcome": "finding", "signature": signature(exc),
                "message": f"{type(exc).__name__}: {' '.join(str(exc).split())[:500]}",
                "traceback": "".join(traceback.format_exception(exc))[-4000:]}
    return {"outcome": "accepted" if calls.accepted else "rejected"}


def _send(fd: int, obj) -> None:
    payload = pickle.dumps(obj)
    os.write(fd, struct.pack("<Q", len(payload)))
    view = memoryview(payload)
    while view:
        view = view[os.write(fd, view):]


def _recv(fd: int, deadline: float | None = None):
    size = struct.unpack("<Q", _read_exact(fd, 8, deadline))[0]
    return pickle.loads(_read_exact(fd, size, deadline))


def _read_exact(fd: int, n: int, deadline: float | None) -> bytes:
    chunks, left = [], n
    while left:
        if deadline is not None:
            wait = deadline - time.monotonic()
            if wait <= 0 or not select.select([fd], [], [], wait)[0]:
                raise TimeoutError
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def worker_main(memory_mb: int) -> None:
    """Serve ("seeds", target) and ("run", target, data) requests on stdin / stdout."""
    import resource
    import warnings

    if memory_mb:
        limit = memory_mb << 20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    out = os.dup(1)
    os.dup2(2, 1)  # anything a reader prints goes to the log, not into the protocol
    warnings.simplefilter("ignore")
    import logging

    logging.disable(logging.CRITICAL)
    import torch

    torch.set_num_threads(1)
    import seeds
    import targets

    if set(targets.TARGETS) != set(TARGET_NAMES):  # the parent's list (it never imports bqq_deploy)
        raise RuntimeError(f"TARGET_NAMES {TARGET_NAMES} != targets.TARGETS {sorted(targets.TARGETS)}")
    scratch_root = Path(tempfile.mkdtemp(prefix="bqq-pyfuzz-"))
    try:
        while True:
            try:
                request = _recv(0)
            except EOFError:
                return
            op, target = request[0], request[1]
            scratch = scratch_root / target
            scratch.mkdir(exist_ok=True)
            if op == "seeds":
                _send(out, seeds.SEEDS[target]())
            else:
                _send(out, run_case(target, request[2], scratch))
    finally:
        import shutil

        shutil.rmtree(scratch_root, ignore_errors=True)


# --- parent side -----------------------------------------------------------------------------

class Worker:
    """A worker process; restarted after a crash or a hang."""

    def __init__(self, memory_mb: int, log_path: Path):
        self.memory_mb, self.log_path, self.proc = memory_mb, log_path, None

    def _start(self) -> None:
        log = open(self.log_path, "ab")  # O_APPEND: truncating it between cases is safe
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONHASHSEED="0")
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--worker",
                                      "--memory-mb", str(self.memory_mb)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, env=env)
        log.close()

    def request(self, message, timeout: float) -> dict:
        if self.proc is None:
            self._start()
        os.truncate(self.log_path, 0)
        try:
            _send(self.proc.stdin.fileno(), message)
            return _recv(self.proc.stdout.fileno(), time.monotonic() + timeout)
        except TimeoutError:
            self.stop()
            return {"outcome": "finding", "signature": "hang",
                    "message": f"no answer within {timeout:g} s (killed)", "traceback": self._log_tail()}
        except (EOFError, BrokenPipeError):
            status = self.proc.wait()
            self.proc = None
            how = f"signal {signal.Signals(-status).name}" if status < 0 else f"exit status {status}"
            return {"outcome": "finding", "signature": f"crash ({how})",
                    "message": f"the worker died ({how})", "traceback": self._log_tail()}

    def _log_tail(self) -> str:
        try:
            return self.log_path.read_bytes()[-4000:].decode("utf-8", "replace")
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


def fuzz_target(worker: Worker, target: str, runs: int, seed: int, timeout: float,
                artifacts: Path | None) -> dict:
    rng = random.Random(f"{seed}:{target}")
    started = time.monotonic()
    seed_inputs = worker.request(("seeds", target), timeout=300)
    if not isinstance(seed_inputs, list):
        raise RuntimeError(f"{target}: the worker could not make seeds: {seed_inputs.get('traceback')}")
    pool, known_pool = list(seed_inputs), set(seed_inputs)
    stats = {"target": target, "seeds": len(seed_inputs), "cases": 0, "accepted": 0, "rejected": 0,
             "findings": {}}
    cases = [(data, 120.0) for data in seed_inputs]  # seeds: first use of a reader (imports)
    for i in range(len(cases) + runs):
        if i < len(cases):
            data, limit = cases[i]
        else:
            data, limit = mutators.mutate(target, rng.choice(pool), rng, pool), timeout
        result = worker.request(("run", target, data), limit)
        stats["cases"] += 1
        outcome = result["outcome"]
        if outcome != "finding":
            stats[outcome] += 1
            if outcome == "accepted" and data not in known_pool and len(pool) < 256:
                pool.append(data)  # a variant the reader takes: mutate it further
                known_pool.add(data)
            continue
        _record(stats, target, data, result, artifacts)
    stats["seconds"] = round(time.monotonic() - started, 1)
    return stats


def _record(stats: dict, target: str, data: bytes, result: dict, artifacts: Path | None) -> None:
    sig = result["signature"]
    entry = stats["findings"].setdefault(sig, {"count": 0, "message": result["message"],
                                               "reproducer": None, "traceback": result["traceback"]})
    entry["count"] += 1
    if artifacts is not None and entry["reproducer"] is None:
        folder = artifacts / target
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{'hang' if sig == 'hang' else 'crash'}-{hashlib.sha1(data).hexdigest()[:16]}"
        path.write_bytes(data)
        entry["reproducer"] = str(path)


def findings(results: list[dict]) -> list[str]:
    return [f"{r['target']}: {sig} x{f['count']} ({f['message'][:200]}; reproducer {f['reproducer']})"
            for r in results for sig, f in r["findings"].items()]


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.machine()} {model}, {os.cpu_count()} cores, Python {platform.python_version()}"


# --- single input, atheris ------------------------------------------------------------------

def reproduce(target: str, path: Path) -> int:
    import targets

    scratch = Path(tempfile.mkdtemp(prefix="bqq-pyfuzz-"))
    calls = targets.Calls()
    targets.TARGETS[target].run(Path(path).read_bytes(), scratch, calls)  # a finding raises here
    print(f"{target}: no finding ({calls.accepted} calls accepted the input, {calls.rejected} rejected it "
          f"with {targets.TARGETS[target].accepts})")
    return 0


def atheris_main(target: str, argv: list[str]) -> None:
    import atheris

    with atheris.instrument_imports(include=["bqq_deploy"]):
        import targets
    scratch = Path(tempfile.mkdtemp(prefix="bqq-atheris-"))

    def one_input(data: bytes) -> None:
        targets.TARGETS[target].run(data, scratch, targets.Calls())

    def custom_mutator(data: bytes, max_size: int, seed: int) -> bytes:
        rng = random.Random(seed)
        if rng.random() < 0.5:
            return mutators.mutate(target, data, rng, max_len=max_size)
        return atheris.Mutate(data, max_size)

    atheris.Setup([sys.argv[0], *argv], one_input, custom_mutator=custom_mutator)
    atheris.Fuzz()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        worker_main(int(argv[2]) if argv[1:2] == ["--memory-mb"] else 0)
        return 0
    if argv[:1] == ["--atheris"] and len(argv) >= 2 and argv[1] in TARGET_NAMES:
        atheris_main(argv[1], argv[2:])
        return 0
    parser = argparse.ArgumentParser(prog="pyfuzz.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("targets", nargs="*", metavar="TARGET", help=f"default: all of {', '.join(TARGET_NAMES)}")
    parser.add_argument("--runs", type=int, default=1000, help="mutated cases per target (default 1000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=20.0, help="seconds per case (default 20)")
    parser.add_argument("--memory-mb", type=int, default=4096, help="address-space limit of the worker")
    parser.add_argument("--artifacts", type=Path, help="folder for reproducers (default: none written)")
    parser.add_argument("--json", type=Path, help="write the summary here")
    parser.add_argument("--reproduce", nargs=2, metavar=("TARGET", "FILE"))
    args = parser.parse_args(argv)
    if args.reproduce:
        return reproduce(args.reproduce[0], Path(args.reproduce[1]))
    unknown = [t for t in args.targets if t not in TARGET_NAMES]
    if unknown:
        parser.error(f"unknown target(s) {', '.join(unknown)}; choose from {', '.join(TARGET_NAMES)}")
    with tempfile.TemporaryDirectory(prefix="bqq-pyfuzz-log-") as logs:
        worker = Worker(args.memory_mb, Path(logs) / "worker.log")
        try:
            results = []
            for target in args.targets or TARGET_NAMES:
                stats = fuzz_target(worker, target, args.runs, args.seed, args.timeout, args.artifacts)
                results.append(stats)
                failing = sum(f["count"] for f in stats["findings"].values())
                print(f"{target:13s} {stats['cases']:7d} cases in {stats['seconds']:7.1f} s: "
                      f"{stats['accepted']} accepted, {stats['rejected']} rejected with "
                      f"the documented error, {failing} findings "
                      f"({len(stats['findings'])} signatures)", flush=True)
        finally:
            worker.stop()
    summary = {"machine": machine(), "seed": args.seed, "runs": args.runs, "results": results}
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    problems = findings(results)
    for line in problems:
        print("FINDING " + line)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
