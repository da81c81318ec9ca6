"""BQQMatMul CUDA kernels vs cuBLAS fp16 (torch.matmul) on the GPU this runs on.

1. Correctness first: for every configuration, fresh random packed weights (random bits,
   random fp16 scales; no solver needed) and activations, output poisoned with NaN, the CUDA
   result compared with the Python reference (bqq_deploy.nn.reference_matmul, fp32, on the
   GPU): rel. error <= 1e-2 (fp16) / 1e-5 (fp32) of max|y|. Any failure aborts.
2. Timings with CUDA events: warm-up, median of many runs, L2 flushed before each run when
   rows <= 64 (weights come from DRAM), queue pre-filled so launch overhead is not timed.
   Both sides do the same work, x [rows, K] fp16 times a [N, K] weight, no bias: cuBLAS
   fp16 (torch.matmul) on a dense weight; BQQ as dispatched (cuda_matmul), the BQQ kernels
   alone (dense path off), the dense path alone (W_hat to fp16 + cuBLASLt, inside the
   library, from 1 row on), and the portable SIMT kernels (rows <= 16; the sm_75 path).
   The crossover - the smallest row count from which the dense path beats the kernels at
   every larger measured count - is printed next to the library's compiled threshold
   (kDenseMinRows in plugins/bqq_matmul/bqq_launch.cu): the measured value belongs there.
3. Device-to-device copy bandwidth, to put the achieved GB/s in context.
Writes bench/results/<gpu-name>.md (atomically). Usage: python bench/kernel_bench.py [--quick]
"""

from __future__ import annotations

import argparse
import datetime
import re
import statistics
import subprocess
import sys
from pathlib import Path

import torch

from bqq_deploy import kernels
from bqq_deploy.atomic import atomic_write_bytes
from bqq_deploy.format import BQQWeight
from bqq_deploy.nn import reference_matmul

ROWS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096]
SHAPES = [(4096, 4096)]  # (N, K): the acceptance shape of issue 15
BITS = [2, 3]
TOLERANCE = {torch.float16: 1e-2, torch.float32: 1e-5}


def random_weight(n: int, k: int, stacks: int, group: int, rank: int, gen: torch.Generator) -> BQQWeight:
    rows, cols, words = -(-n // group), -(-k // group), -(-rank // 32)

    def bits(shape):
        words_ = torch.randint(-2**31, 2**31, shape, dtype=torch.int64, generator=gen)
        if rank % 32:  # bits past the rank must be zero (docs/FORMAT.md section 2)
            words_[..., -1] &= (1 << (rank % 32)) - 1
        return words_.to(torch.int32)

    scales = (0.02 * torch.randn(stacks, rows, cols, 4, generator=gen)).half()
    return BQQWeight(n, k, group, group, rank, bits((stacks, rows, cols, group, words)),
                     bits((stacks, rows, cols, group, words)), scales, None).to("cuda")


def check(weight: BQQWeight, rows: int, dtype: torch.dtype, gen: torch.Generator) -> float:
    x = torch.randn(rows, weight.in_features, generator=gen).to("cuda", dtype)
    want = reference_matmul(x.float(), weight)
    out = torch.full((rows, weight.out_features), float("nan"), dtype=dtype, device="cuda")
    kernels.cuda_matmul(x, weight, out=out)
    if not bool(torch.isfinite(out).all()):
        raise SystemExit(f"FAIL: NaN poison survived ({weight.fields}, rows={rows}, {dtype})")
    err = float((out.float() - want).abs().max() / want.abs().max())
    if err > TOLERANCE[dtype]:
        raise SystemExit(f"FAIL: rel err {err:.3g} > {TOLERANCE[dtype]} ({weight.fields}, rows={rows}, {dtype})")
    return err


def median_ms(fn, runs: int, flush: torch.Tensor | None) -> float:
    for _ in range(3):
        fn()
    times = []
    for start in range(0, runs, 10):
        batch = min(10, runs - start)
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                  for _ in range(batch)]
        torch.cuda._sleep(5_000_000)  # keeps the GPU busy while the batch is enqueued
        for begin, end in events:
            if flush is not None:
                flush.zero_()
            begin.record()
            fn()
            end.record()
        torch.cuda.synchronize()
        times += [begin.elapsed_time(end) for begin, end in events]
    return statistics.median(times)


def copy_bandwidth_gbs(nbytes: int = 1 << 30) -> float:
    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = median_ms(lambda: dst.copy_(src), 20, None)
    return 2 * nbytes / ms / 1e6  # read + write


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="rows 1/16/256/4096, 20 runs")
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--group", type=int, default=64)
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args(argv)

    usable, reason = kernels.cuda_status()
    if not usable:
        print(f"kernel_bench needs a CUDA GPU and the built CUDA library: {reason}", file=sys.stderr)
        return 2
    torch.backends.cuda.matmul.allow_tf32 = False  # the fp32 reference must be fp32
    shapes, rows_list, runs = (SHAPES[:1], [1, 16, 256, 4096], 20) if args.quick else (SHAPES, ROWS, args.runs)
    gen = torch.Generator().manual_seed(0)
    prop = torch.cuda.get_device_properties(0)
    flush = torch.empty(max(2 * getattr(prop, "L2_cache_size", 50 << 20), 256 << 20),
                        dtype=torch.uint8, device="cuda")

    print("correctness (fresh random weights, NaN-poisoned outputs) ...")
    worst = {torch.float16: 0.0, torch.float32: 0.0}
    for n, k in shapes:
        for p in BITS:
            weight = random_weight(n, k, p, args.group, args.rank, gen)
            for rows in rows_list:
                for dtype in worst:
                    worst[dtype] = max(worst[dtype], check(weight, rows, dtype, gen))
    print(f"  all passed; worst rel err fp16 {worst[torch.float16]:.2e}, fp32 {worst[torch.float32]:.2e}")

    copy_gbs = copy_bandwidth_gbs()
    print(f"device-to-device copy: {copy_gbs:.0f} GB/s")
    compiled_threshold = kernels.dense_min_rows()
    if compiled_threshold is None:
        print("library built without cuBLASLt: no dense path to time (set BQQ_CUBLAS_ROOT, docs/KERNELS.md)")
    lines, thresholds = [], []
    for n, k in shapes:
        dense = torch.randn(n, k, generator=gen).to("cuda", torch.float16)
        for p in BITS:
            weight = random_weight(n, k, p, args.group, args.rank, gen)
            wins = []  # (rows, dense path faster than the kernels)
            for rows in rows_list:
                x = torch.randn(rows, k, generator=gen).to("cuda", torch.float16)
                out = torch.empty(rows, n, dtype=torch.float16, device="cuda")
                flush_buf = flush if rows <= 64 else None

                def bqq():
                    kernels.cuda_matmul(x, weight, out=out)

                bqq_ms = median_ms(bqq, runs, flush_buf)
                path = kernels.last_path()
                dense_ms = median_ms(lambda: torch.matmul(x, dense.T), runs, flush_buf)
                kernel_ms = deq_ms = port_ms = float("nan")
                if compiled_threshold is not None:
                    kernels.set_dense_min_rows(kernels.DENSE_NEVER)
                    kernel_ms = median_ms(bqq, runs, flush_buf)
                    kernels.set_dense_min_rows(1)
                    deq_ms = median_ms(bqq, runs, flush_buf)
                    kernels.set_dense_min_rows(compiled_threshold)
                    wins.append((rows, deq_ms < kernel_ms))
                if rows <= 16:
                    kernels.set_portable(True)
                    port_ms = median_ms(bqq, runs, flush_buf)
                    kernels.set_portable(False)
                io = 2 * rows * (n + k)
                bqq_gbs = (weight.nbytes + io) / bqq_ms / 1e6
                dense_gbs = (2 * n * k + io) / dense_ms / 1e6
                lines.append(f"| {n} | {k} | {p} | {rows} | {path} | {bqq_ms * 1e3:.1f} | {kernel_ms * 1e3:.1f} | "
                             f"{deq_ms * 1e3:.1f} | {port_ms * 1e3:.1f} | {dense_ms * 1e3:.1f} | "
                             f"{dense_ms / bqq_ms:.2f} | {bqq_gbs:.0f} | {dense_gbs:.0f} |")
                print(lines[-1], flush=True)
            crossover = next((r for i, (r, _) in enumerate(wins) if all(w for _, w in wins[i:])), None)
            if compiled_threshold is not None:
                thresholds.append(f"- N={n} K={k} p={p}: measured crossover (dense path faster than the kernels at "
                                  f"every larger measured row count): {crossover if crossover else 'none'} rows; "
                                  f"compiled kDenseMinRows = {compiled_threshold}")
                print(thresholds[-1], flush=True)

    name = torch.cuda.get_device_name(0)
    driver = "unknown"
    try:
        driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    report = [
        f"# BQQMatMul kernel benchmark: {name}", "",
        f"- GPU: {name} (compute capability {prop.major}.{prop.minor}, {prop.multi_processor_count} SMs)",
        f"- driver {driver}, torch CUDA {torch.version.cuda}, torch {torch.__version__}",
        f"- date (UTC): {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M}",
        f"- weights: group {args.group}x{args.group}, rank {args.rank}, random bits and fp16 scales;"
        f" activations fp16, no bias on either side; median of {runs} runs, CUDA events; L2 flushed"
        f" before each run for rows <= 64",
        f"- correctness first (NaN-poisoned outputs vs the Python reference): worst rel. error"
        f" fp16 {worst[torch.float16]:.2e}, fp32 {worst[torch.float32]:.2e}",
        f"- measured device-to-device copy bandwidth: {copy_gbs:.0f} GB/s (read + write)", "",
        "| N (out) | K (in) | bits p | rows | BQQ path | BQQ us | kernels us | dense path us | portable us |"
        " cuBLAS fp16 us | speed-up | BQQ GB/s | cuBLAS GB/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|", *lines, "",
        "Dense-path threshold (W_hat to fp16 + cuBLASLt; kDenseMinRows in plugins/bqq_matmul/bqq_launch.cu):",
        *(thresholds or ["- not measured: library built without cuBLASLt"]), "",
        "BQQ us: cuda_matmul as dispatched (path in 'BQQ path'); kernels us: dense path off; dense path us:"
        " dense path from 1 row on. GB/s = (packed weight bytes, or 2*N*K for cuBLAS, + activations in and"
        " out) / time. speed-up = cuBLAS time / BQQ time.", ""]
    slug = re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower()
    path = args.out_dir / f"{slug}.md"
    atomic_write_bytes(path, ["\n".join(report).encode()])
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
