"""Solver tuning runs behind docs/SOLVER_TUNING.md section (d): the weight-MSE ratio of BQQ to
asymmetric group-64 round-to-nearest under any BQQConfig override, and the cost of one
annealing step. Each run appends a section to bench/results/solver_tuning.md, machine named.

    python bench/solver_tuning.py ratio --weights gaussian --set steps=500 warm_t_end=0.07
    python bench/solver_tuning.py ratio --weights digits_vit_large --bits 2
    python bench/solver_tuning.py ratio --weights distributions --bits 2 3
    python bench/solver_tuning.py step-time

Weights: "gaussian" is N(0, 1) 256x512 with seeds 0 and 1 on one thread (the ratio is the
mean of the two); "distributions" is Gaussian, Laplace and Student-t(4) 512x1024, drawn in
that order after torch.manual_seed(0); a model name is every nn.Linear of that trained
model, solved in one quantize_weights call.
"""

from __future__ import annotations

import argparse
import time
from datetime import datetime, timezone

import torch

import baselines
from matrix_compression import append_result, machine_summary, markdown_table
from quality import model_path

from bqq_deploy import BQQConfig, quantize_weight, quantize_weights
from bqq_deploy.models import load_trained


def _override(text: str) -> tuple[str, object]:
    key, _, value = text.partition("=")
    defaults = BQQConfig()
    if not hasattr(defaults, key):
        raise argparse.ArgumentTypeError(f"BQQConfig has no field {key!r}")
    kind = type(getattr(defaults, key))
    return key, (value.lower() in ("1", "true", "yes")) if kind is bool else kind(value)


def _weights(name: str) -> list[dict[str, torch.Tensor]]:
    """Groups of weights; each group is quantised in one call and reported as one row."""
    if name == "gaussian":
        return [{"N(0,1) 256x512": torch.randn(256, 512, generator=torch.Generator().manual_seed(s))}
                for s in (0, 1)]
    if name == "distributions":
        torch.manual_seed(0)
        return [{"Gaussian 512x1024": torch.randn(512, 1024)},
                {"Laplace 512x1024": torch.distributions.Laplace(0.0, 1.0).sample((512, 1024))},
                {"Student-t(4) 512x1024": torch.distributions.StudentT(4.0).sample((512, 1024))}]
    model, _ = load_trained(model_path(name))
    return [{n: m.weight.detach() for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}]


def ratio_rows(weights: str, bits: int, overrides: dict) -> list[list]:
    config = BQQConfig(**{**overrides, "bits": bits})
    groups = _weights(weights)
    threads = torch.get_num_threads()
    if weights == "gaussian":
        torch.set_num_threads(1)
    rows = []
    try:
        for group in groups:
            start = time.perf_counter()
            packed = quantize_weights(group, config, progress=False)
            seconds = time.perf_counter() - start
            count = sum(w.numel() for w in group.values())
            bqq = sum(packed[n].info["mse"] * w.numel() for n, w in group.items())
            rtn = sum(float(((baselines.rtn_quantize(w, bits, 64).weight - w) ** 2).sum())
                      for w in group.values())
            rows.append([" + ".join(group) if len(group) == 1 else f"{len(group)} layers", bits,
                         bqq / count, rtn / count, bqq / rtn, seconds, seconds / count * 1e6])
    finally:
        torch.set_num_threads(threads)
    if weights == "gaussian":  # one row: the mean over the two seeds
        rows = [[rows[0][0] + ", seeds 0-1", bits] + [sum(r[i] for r in rows) / 2 for i in range(2, 7)]]
    return rows


def step_time_rows(steps: int) -> list[list]:
    """ms per annealing step per million weights: (time(steps) - time(0)) / steps, one stack,
    no flips, 64x64 blocks. Batches under 1M padded weights run on one thread (the solver's
    own rule), whatever the thread count."""
    rows = []
    for blocks in (64, 256, 1024):
        w = torch.randn(64 * blocks, 64, generator=torch.Generator().manual_seed(0))
        times = []
        for n in (0, steps):
            config = BQQConfig(bits=1, steps=n, flip_rounds=0, joint_refine=False, device="cpu")
            quantize_weight(w, config)  # warm-up
            start = time.perf_counter()
            quantize_weight(w, config)
            times.append(time.perf_counter() - start)
        per_step = (times[1] - times[0]) / steps
        rows.append([blocks, torch.get_num_threads(), per_step * 1e3 / (w.numel() / 1e6)])
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    ratio = sub.add_parser("ratio", help="weight MSE of BQQ / RTN g64 at equal stacks and bits")
    ratio.add_argument("--weights", default="gaussian",
                       help="gaussian, distributions, digits_vit or digits_vit_large")
    ratio.add_argument("--bits", type=int, nargs="+", default=[3])
    ratio.add_argument("--set", type=_override, nargs="*", default=[], metavar="FIELD=VALUE",
                       help="BQQConfig fields that differ from the defaults")
    timing = sub.add_parser("step-time", help="cost of one annealing step")
    timing.add_argument("--steps", type=int, default=100)
    parser.add_argument("--label", default="", help="added to the section title (e.g. a commit)")
    args = parser.parse_args(argv)

    if args.command == "ratio":
        overrides = dict(args.set)
        header = ["weights", "bits", "BQQ MSE", "RTN g64 MSE", "ratio", "seconds", "s / M weights"]
        rows = [row for bits in args.bits for row in ratio_rows(args.weights, bits, overrides)]
        title = f"ratio, {args.weights}, " + (", ".join(f"{k}={v}" for k, v in overrides.items())
                                               or "defaults")
    else:
        header = ["blocks of 64x64", "threads", "ms / step / M weights"]
        rows = step_time_rows(args.steps)
        title = f"step time, {args.steps} steps"
    table = markdown_table(header, rows)
    print(table)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    label = f" ({args.label})" if args.label else ""
    append_result("solver_tuning.md", "# Solver tuning runs\n\nWritten by `python bench/solver_tuning.py`; "
                  "one section per run (docs/SOLVER_TUNING.md section (d) reads these).\n",
                  f"\n## {title}{label}\n\n{stamp}; {machine_summary()}\n\n{table}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
