"""Solver speed and quality on the paper's reference problem: a 128x128 standard-normal
matrix, one 128x128 block, rank scale 1 (l = 64).

Rows:
- "plain loop": the paper's annealed mean-field descent written as a plain PyTorch loop
  (one matrix, a Python-built 4x4 system solved every step), the speed baseline;
- "paper mode": bqq_deploy's solver restricted to the paper's algorithm (random start,
  no bit flips, greedy scales), at several step counts; 3 stacks, so the 2-bit figure is
  the first two greedy stacks of the same run (greedy stacks never change earlier ones);
- the presets and other settings of bqq_deploy (SVD warm start, bit flips, joint refit).

Usage: python bench/solver_speed.py [--part plain|paper|ours|all] [--steps 5000,20000,50000]
Appends a section to bench/results/solver_speed.md. CPU timings on a shared machine are
noisy; the script uses one thread (torch.set_num_threads(1)), which was much more stable
than two threads under load.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from matrix_compression import machine_summary, markdown_table  # noqa: E402

from bqq_deploy import BQQConfig, quantize_weight  # noqa: E402

RESULTS = REPO / "bench" / "results" / "solver_speed.md"


def plain_loop(x: torch.Tensor, bits: int, steps: int, seed: int = 0, zeta=4.0, eta=0.06,
               t_start=0.2, t_end=0.005) -> tuple[torch.Tensor, float]:
    """The paper's algorithm, greedy over stacks, as a direct loop; returns (W_hat, seconds)."""
    torch.manual_seed(seed)
    start = time.perf_counter()
    rows, cols = x.shape
    rank = round(rows * cols / (rows + cols))
    approx = torch.zeros_like(x)
    for _ in range(bits):
        target = x - approx
        span = target.max() - target.min()
        t = target / span

        def solve(y, z):  # mean-field normal equations, built entry by entry
            yz = y @ z
            sy, sz = y.sum(1, keepdim=True), z.sum(0, keepdim=True)
            sy2, sz2 = (y * y).sum(1, keepdim=True), (z * z).sum(0, keepdim=True)
            g = torch.zeros(4, 4)
            g[0, 0] = (yz ** 2 + yz - (y * y) @ (z * z)).sum()
            g[0, 1] = g[1, 0] = ((sy + 1) * yz - (y * y) @ z).sum()
            g[0, 2] = g[2, 0] = ((1 + sz) * yz - y @ (z * z)).sum()
            g[0, 3] = g[3, 0] = yz.sum()
            g[1, 1] = (sy ** 2 + sy - sy2).sum() * cols
            g[1, 2] = g[2, 1] = (sy * sz).sum()
            g[1, 3] = g[3, 1] = sy.sum() * cols
            g[2, 2] = (sz ** 2 + sz - sz2).sum() * rows
            g[2, 3] = g[3, 2] = sz.sum() * rows
            g[3, 3] = rows * cols
            r = torch.stack([(t * yz).sum(), (t * sy).sum(), (t * sz).sum(), t.sum()])
            try:
                return torch.linalg.solve(g, r)
            except RuntimeError:
                return torch.linalg.pinv(g) @ r

        y_prev, z_prev = torch.rand(rows, rank), torch.rand(rank, cols)
        y, z = y_prev - eta * (y_prev - 0.5), z_prev - eta * (z_prev - 0.5)
        a = solve(y, z)
        temp, dt = t_start, (t_start - t_end) / (steps - 1)
        for _ in range(steps):
            yf, zf = y + zeta * (y - y_prev), z + zeta * (z - z_prev)
            part = t - (a[3] + a[0] * (yf @ zf) + a[1] * yf.sum(1, keepdim=True)
                        + a[2] * zf.sum(0, keepdim=True))
            gy = (-2 * part @ (a[0] * zf + a[1]).T
                  + (a[0] ** 2 + 2 * a[0] * a[1] * (1 - 2 * yf) + 2 * a[0] * a[2]) * zf.sum(1)[None]
                  - 2 * (a[0] * a[2] + a[0] ** 2 * yf) * (zf * zf).sum(1)[None]
                  + a[1] ** 2 * (1 - 2 * yf) * cols)
            gz = (-2 * (a[0] * yf + a[2]).T @ part
                  + (a[0] ** 2 + 2 * a[0] * a[1] + 2 * a[0] * a[2] * (1 - 2 * zf)) * yf.sum(0)[:, None]
                  - 2 * (a[0] ** 2 * zf + a[0] * a[1]) * (yf * yf).sum(0)[:, None]
                  + a[2] ** 2 * (1 - 2 * zf) * rows)
            y_new = (2 * y - y_prev - eta * (gy + temp * (y - 0.5))).clamp(0, 1)
            z_new = (2 * z - z_prev - eta * (gz + temp * (z - 0.5))).clamp(0, 1)
            y_prev, z_prev, y, z = y, z, y_new, z_new
            a = solve(y, z)
            temp -= dt
        y, z = (y > 0.5).float(), (z > 0.5).float()
        a = solve(y, z) * span
        approx = approx + (a[0] * (y @ z) + a[1] * y.sum(1, keepdim=True)
                           + a[2] * z.sum(0, keepdim=True) + a[3])
    return approx, time.perf_counter() - start


def ours(x: torch.Tensor, cfg: BQQConfig) -> tuple[dict, float]:
    start = time.perf_counter()
    q = quantize_weight(x, cfg)
    return q.info, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["plain", "paper", "ours", "all"], default="all")
    parser.add_argument("--steps", default="5000,20000,50000")
    parser.add_argument("--plain-steps", type=int, default=50_000)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    x = torch.randn(128, 128, generator=torch.Generator().manual_seed(0))
    header = ["method", "steps/stack", "MSE 2-bit", "MSE 3-bit", "seconds (3 stacks)", "note"]
    rows = []
    if args.part in ("plain", "all"):
        approx, secs = plain_loop(x, 2, args.plain_steps)
        err = float(((approx - x) ** 2).mean())
        rows.append(["plain loop (paper)", args.plain_steps, err, "", "",
                     f"2 stacks only: {secs:.1f} s; fp32 scales"])
        print(rows[-1], flush=True)
    base = dict(group_size=128, bits=3)
    if args.part in ("paper", "all"):
        for steps in (int(s) for s in args.steps.split(",")):
            cfg = BQQConfig(init="random", steps=steps, flip_rounds=0, joint_refine=False,
                            scale_interval=1, **base)
            info, secs = ours(x, cfg)
            joint = quantize_weight(x, BQQConfig(**{**cfg.to_dict(), "joint_refine": True}))
            rows.append(["paper mode, greedy", steps, info["greedy_mse"][1], info["mse"], secs,
                         f"joint refit: 3-bit {joint.info['mse']:.4f}"])
            print(rows[-1], flush=True)
    if args.part in ("ours", "all"):
        settings = [("preset fast", BQQConfig.preset("fast", **base)),
                    ("preset balanced", BQQConfig.preset("balanced", **base)),
                    ("preset best", BQQConfig.preset("best", **base)),
                    ("svd + 5000 steps", BQQConfig(steps=5000, **base)),
                    ("svd + 10000 steps", BQQConfig(steps=10_000, **base))]
        for name, cfg in settings:
            info, secs = ours(x, cfg)
            # The 2-bit figure of a joint-refined run is its own 2-stack solve (timed).
            two, secs2 = ours(x, BQQConfig(**{**cfg.to_dict(), "bits": 2}))
            rows.append([name, cfg.steps, two["mse"], info["mse"], secs,
                         f"2 stacks: {secs2:.1f} s; flip rounds {info['flip_rounds']}"])
            print(rows[-1], flush=True)
    text = (f"\n## {time.strftime('%Y-%m-%d %H:%M')} part={args.part}\n\n{machine_summary()}\n\n"
            + markdown_table(header, rows) + "\n")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with open(RESULTS, "a") as handle:
        handle.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
