"""Quantiser throughput: seconds per million weights per preset, and how one solve scales
from one process to several (torchrun, docs/SCALE.md). The weights are the linear layers of
one Qwen2-0.5B decoder block (q, k, v, o: 896 wide, 2 KV heads of 64; gate, up, down:
4864), drawn N(0, 0.02^2); `--layers attention` keeps q, k, v, o only (1.83M weights).
Appends a table to bench/results/throughput.md with the machine named.

    python bench/throughput.py presets --layers attention --threads 1  # this CPU, every preset
    python bench/throughput.py presets --device cuda                   # a GPU (make gpu-check)
    python bench/throughput.py scaling --layers attention --batch-weights 262144   # 1 vs 2 processes

`scaling` times the same solve (the solver cache in a fresh directory each time) as one
process on one thread, one process on two threads, and torchrun with two processes of one
thread each (gloo), checks that all three give the same bits, and reports the speed-up.
With --device cuda the processes are torchrun's, one GPU each (--nproc, default: all GPUs).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from matrix_compression import append_result, machine_summary, markdown_table

from bqq_deploy import BQQConfig, quantize_weights
from bqq_deploy.quantize import distributed
from bqq_deploy.quantize.driver import _SINGLE_THREAD_BELOW

HIDDEN, KV, FFN = 896, 128, 4864
SHAPES = {"q": (HIDDEN, HIDDEN), "k": (KV, HIDDEN), "v": (KV, HIDDEN), "o": (HIDDEN, HIDDEN),
          "gate": (FFN, HIDDEN), "up": (FFN, HIDDEN), "down": (HIDDEN, FFN)}


def weights(layers: str) -> dict[str, torch.Tensor]:
    names = "qkvo" if layers == "attention" else list(SHAPES)
    gen = torch.Generator().manual_seed(0)
    return {name: 0.02 * torch.randn(*SHAPES[name], generator=gen) for name in names}


def timed(w: dict, config: BQQConfig, cache_dir=None) -> tuple[float, dict]:
    if config.device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    packed = quantize_weights(w, config, cache_dir=cache_dir, progress=False)
    if config.device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start, packed


def presets(args) -> tuple[str, str]:
    if args.threads:
        torch.set_num_threads(args.threads)
    w = weights(args.layers)
    total = sum(t.numel() for t in w.values())
    header = ["preset", "bits", "device", "weights", "wall s", "s / M weights", "weight MSE / Var(W)"]
    rows = []
    for preset in args.presets:
        config = BQQConfig.preset(preset, bits=args.bits, device=args.device)
        timed({"warm-up": w["q"][:64, :64].clone()}, config)  # first-call costs (CUDA context)
        seconds, packed = timed(w, config)
        sse = sum(float(((p.dequantize() - w[n]) ** 2).sum()) for n, p in packed.items())
        rows.append([preset, str(args.bits), args.device, f"{total / 1e6:.2f}M", f"{seconds:.1f}",
                     f"{seconds / total * 1e6:.2f}", f"{sse / total / 0.02 ** 2:.4f}"])
        print(markdown_table(header, rows[-1:]), flush=True)
    return (f"seconds per million weights per preset, {args.layers} layers of a Qwen2-0.5B block",
            markdown_table(header, rows))


def worker(args) -> None:
    """One process of a scaling run (plain, or a torchrun rank): time the solve, rank 0
    writes seconds and a digest of the bits to args.result."""
    torch.set_num_threads(args.threads or 1)
    config = BQQConfig.preset(args.preset, bits=args.bits, device=args.device,
                              batch_weights=args.batch_weights)
    if config.device.startswith("cuda"):
        distributed.setup()  # pins this rank's GPU before the warm-up touches one
    seconds, packed = timed(weights(args.layers), config, cache_dir=args.cache)
    if distributed.is_writer():
        digest = hashlib.sha256()
        for name in sorted(packed):
            for field in (packed[name].y_bits, packed[name].z_bits, packed[name].scales):
                digest.update(field.cpu().numpy().tobytes())
        Path(args.result).write_text(json.dumps({"seconds": seconds, "digest": digest.hexdigest()}))
    distributed.shutdown()


def scaling(args) -> tuple[str, str]:
    w = weights(args.layers)
    total = sum(t.numel() for t in w.values())
    cuda = args.device.startswith("cuda")
    nproc = args.nproc or (torch.cuda.device_count() if cuda else 2)
    me = [str(Path(__file__).resolve()), "worker", "--preset", args.preset, "--bits", str(args.bits),
          "--layers", args.layers, "--device", args.device, "--batch-weights", str(args.batch_weights)]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                f"--nproc-per-node={nproc}"]
    plain = [sys.executable]
    runs = [("1 process, 1 thread", plain, 1)] if not cuda else [("1 process, 1 GPU", plain, 1)]
    if not cuda:
        runs.append(("1 process, 2 threads", plain, 2))
    runs.append((f"torchrun, {nproc} processes" + (", 1 GPU each" if cuda else ", 1 thread each"),
                 torchrun, 1))
    header = ["run", "preset", "weights", "solve wall s", "s / M weights", "speed-up", "same bits"]
    rows, base, digest = [], None, None
    for label, launcher, threads in runs:
        with tempfile.TemporaryDirectory(prefix="bqq-throughput-") as scratch:
            result = Path(scratch) / "result.json"
            command = [*launcher, *me, "--threads", str(threads), "--cache", f"{scratch}/cache",
                       "--result", str(result)]
            subprocess.run(command, check=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
            out = json.loads(result.read_text())
        base = base or out["seconds"]
        digest = digest if digest is not None else out["digest"]
        rows.append([label, args.preset, f"{total / 1e6:.2f}M", f"{out['seconds']:.1f}",
                     f"{out['seconds'] / total * 1e6:.2f}", f"{base / out['seconds']:.2f}x",
                     "yes" if out["digest"] == digest else "NO"])
        print(markdown_table(header, rows[-1:]), flush=True)
    note = ("\n\nBatches under 2^20 padded weights are solved on one thread whatever the "
            "setting (driver._SINGLE_THREAD_BELOW): the two-thread row is one thread here."
            if args.batch_weights < _SINGLE_THREAD_BELOW and not cuda else "")
    return (f"one solve from one process to {nproc} ({args.layers} layers of a Qwen2-0.5B block, "
            f"batches of at most {args.batch_weights:,} padded weights)",
            markdown_table(header, rows) + note)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=("presets", "scaling", "worker"))
    parser.add_argument("--presets", nargs="+", default=["fast", "balanced", "best"])
    parser.add_argument("--preset", default="fast", help="scaling: the preset timed")
    parser.add_argument("--bits", type=int, default=2)
    parser.add_argument("--layers", choices=("block", "attention"), default="block")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1")
    parser.add_argument("--nproc", type=int, help="scaling: torchrun processes")
    parser.add_argument("--batch-weights", type=int, default=BQQConfig().batch_weights,
                        help="scaling: solver batch size (batches are what the ranks share)")
    parser.add_argument("--shared", default="yes", help="whether other jobs shared the machine")
    parser.add_argument("--no-record", action="store_true", help="print, do not append results")
    parser.add_argument("--threads", type=int, help="presets: torch threads (default: torch's; "
                        "on a loaded machine one is several times faster than two)")
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("throughput.py --device cuda: torch finds no CUDA GPU here")
    if args.mode == "worker":
        return worker(args)
    title, table = presets(args) if args.mode == "presets" else scaling(args)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    section = (f"\n## {stamp}: {title}\n\n{machine_summary()}; machine shared with other "
               f"jobs: {args.shared} (load average {load} at the end); niceness {os.nice(0)}\n\n"
               f"{table}\n")
    print(section)
    if args.no_record:
        return
    append_result("throughput.md", "# Quantiser throughput\n\nWritten by `python bench/throughput.py` "
                      "(docstring: what it times); one section per run.\n", section)


if __name__ == "__main__":
    main()
