"""bqq-validate: accuracy and latency of a bundle or engine against the original model, in one
report (validation.md, validation.json, latency.png)."""

from __future__ import annotations

import argparse
import io
import logging
from pathlib import Path

import numpy as np

from .. import runtime
from ..atomic import atomic_write_bytes, atomic_write_json
from ..bundle import Bundle
from ..errors import CheckFailed, InputError, exit_code
from ..specs import integer_inputs, read_npz, sample_inputs
from .common import add_verbosity, run

PROG = "bqq-validate"
log = logging.getLogger(PROG)
DEFAULTS = runtime.Tolerances()

EPILOG = """\
examples:
  bqq-validate out/bundle --reference models/digits_vit.pt -o out/validation
  bqq-validate out/trt/model.engine --reference model.onnx --inputs batch0.npz batch1.npz \\
      --min-cosine 0.995 --min-top1 0.98 -o out/validation
  bqq-validate out/bundle --random 8 --batch 4 --max-rel 0.05 --min-top1 off -o out/val

exit status: 0 all tolerances met, 1 a tolerance failed (the report is still written),
2 bad input.
"""


def _tolerance(text: str) -> float | None:
    if text.lower() in ("off", "none"):
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'off', got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Run TARGET (a bundle directory, model.engine or a .onnx file) and a reference "
                    "model on the same inputs; report cosine similarity, max abs / rel error, "
                    "top-1 agreement and latency percentiles.")
    parser.add_argument("target", type=Path, help="bundle directory, .engine or .onnx file to check")
    parser.add_argument("--reference", type=Path, metavar="MODEL",
                        help="original model: .onnx, TorchScript .pt, .pt2 (default: the model "
                             "named in the bundle's report.json, when that file exists)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="report directory")
    parser.add_argument("--backend", choices=("auto", "onnxruntime", "tensorrt"), default="auto",
                        help="back end for TARGET (default: auto = the engine when TensorRT is "
                             "installed, else ONNX Runtime)")
    parser.add_argument("--plugin", type=Path, metavar="PATH", help="TensorRT plugin library")
    data = parser.add_mutually_exclusive_group()
    data.add_argument("--inputs", type=Path, nargs="+", metavar="FILE.npz",
                      help="input batches: one .npz per batch, arrays keyed by input name")
    data.add_argument("--random", type=int, metavar="N", default=4,
                      help="N batches of random normal inputs, for models with float inputs "
                           "only (default: 4)")
    parser.add_argument("--batch", type=int, default=1, help="batch size of random inputs (default: 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of random inputs")
    tol = parser.add_argument_group("tolerances (a number, or 'off')")
    tol.add_argument("--min-cosine", type=_tolerance, default=DEFAULTS.min_cosine,
                     help=f"minimum cosine similarity per output (default: {DEFAULTS.min_cosine})")
    tol.add_argument("--max-rel", type=_tolerance, default=DEFAULTS.max_rel,
                     help="maximum of max|diff| / max|reference| per output (default: off)")
    tol.add_argument("--min-top1", type=_tolerance, default=DEFAULTS.min_top1,
                     help=f"minimum top-1 agreement of logit outputs (default: {DEFAULTS.min_top1})")
    parser.add_argument("--iters", type=int, default=50, help="timed iterations per model (default: 50)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed warm-up runs (default: 5)")
    add_verbosity(parser)
    return parser


def handle(args: argparse.Namespace) -> int:
    if args.iters < 1 or args.warmup < 0 or args.batch < 1 or (args.inputs is None and args.random < 1):
        raise InputError("--iters, --batch and --random must be >= 1 and --warmup >= 0")
    if not args.target.exists():
        raise InputError(f"{args.target}: no such bundle directory, engine or ONNX file")
    reference_path = args.reference or _reference_from_report(args.target)
    candidate = _load(args.target, backend=args.backend, plugin_path=args.plugin)
    reference = _load(reference_path)
    inputs = ([read_npz(path) for path in args.inputs] if args.inputs
              else random_inputs(candidate.input_specs, args.random, args.batch, args.seed))
    tolerances = runtime.Tolerances(args.min_cosine, args.max_rel, args.min_top1)
    result = runtime.validate(reference, candidate, inputs, tolerances)
    log.info("timing %s and %s (%d iterations each)", reference.name, candidate.name, args.iters)
    latency = {"reference": runtime.benchmark(reference, inputs[0], warmup=args.warmup, iters=args.iters),
               "candidate": runtime.benchmark(candidate, inputs[0], warmup=args.warmup, iters=args.iters)}
    write_report(args.output, result, latency, reference_path=reference_path, target=args.target)
    log.info("%s: %s", "PASSED" if result.passed else "FAILED", args.output / "validation.md")
    if not result.passed:
        raise CheckFailed("; ".join(result.failures) + f" (report: {args.output / 'validation.md'})")
    return 0


def _reference_from_report(target: Path) -> Path:
    report = Bundle(target if target.is_dir() else target.parent).read_report()
    if report is not None and Path(report.model).is_file():
        return Path(report.model)
    raise InputError("give --reference MODEL (the original .onnx, .pt or .pt2); the bundle's "
                     "report.json names no model file that exists here")


def _load(path: Path, **kwargs) -> runtime.Backend:
    try:
        return runtime.load(path, **kwargs)
    except Exception as exc:  # a parser's own error type (ONNX Runtime, torch.jit)
        if exit_code(exc) is not None:
            raise
        raise InputError(f"{path}: cannot load: {exc}") from exc


def random_inputs(specs: list[runtime.TensorSpec], n: int, batch: int, seed: int) -> list[dict]:
    """n feed dicts of N(0, 1) floats for specs, the dynamic first dim set to batch. Integer
    inputs (token ids, masks, indices) are never invented, and other dynamic dims are not
    guessed: give --inputs for those."""
    invented = integer_inputs(specs)
    if invented:
        raise InputError(f"input(s) {', '.join(invented)} take integers (token ids, masks, "
                         "indices): random values would be invented data, not a measure of "
                         "accuracy; give real inputs with --inputs FILE.npz")
    for spec in specs:
        if not spec.shape:
            raise InputError(f"input {spec.name} has no known shape: give --inputs")
        dynamic = [i for i, dim in enumerate(spec.shape) if i > 0 and not isinstance(dim, int)]
        if dynamic:
            raise InputError(f"input {spec.name} has dynamic dim {dynamic[0]} "
                             f"({spec.shape[dynamic[0]]!r}): give --inputs")
    return [sample_inputs(specs, seed + i, batch) for i in range(n)]


def write_report(out: Path, result: runtime.ValidationResult, latency: dict, *,
                 reference_path: Path, target: Path) -> None:
    """validation.json, validation.md and latency.png, each written atomically."""
    lat = {key: value.to_dict() for key, value in latency.items()}
    speedup = lat["reference"]["p50_ms"] / lat["candidate"]["p50_ms"] if lat["candidate"]["p50_ms"] else None
    data = {"target": str(target), "reference_model": str(reference_path),
            "accuracy": result.to_dict(), "latency": lat, "speedup_p50": speedup}
    md = [f"# Validation of {target}", "", f"Reference model: `{reference_path}`", "",
          "## Accuracy", "", result.to_markdown(), "## Latency", "",
          "| model | back end | device | batch | p50 ms | p90 ms | p99 ms | mean ms | samples/s | peak MB |",
          "|---|---|---|---|---|---|---|---|---|---|"]
    for key, value in lat.items():
        md.append(f"| {key} | {value['backend']} | {value['device']} | {value['batch_size']} | "
                  f"{value['p50_ms']:.4f} | {value['p90_ms']:.4f} | {value['p99_ms']:.4f} | "
                  f"{value['mean_ms']:.4f} | {value['throughput_samples_per_s']:.1f} | "
                  f"{value['peak_memory_mb']:.1f} |")
    md += ["", f"Median speed-up of the candidate: {speedup:.2f}x." if speedup else "",
           f"Peak memory: {lat['candidate']['memory_source']} (whole process on the CPU).",
           "", "![latency](latency.png)", ""]
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "latency.png", [_plot(latency)])
    atomic_write_json(out / "validation.json", data)
    atomic_write_bytes(out / "validation.md", ["\n".join(md).encode()])


def _plot(latency: dict) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.5), dpi=100)
    hist, cdf = fig.subplots(1, 2)
    bins = np.histogram_bin_edges(np.concatenate([v.samples_ms for v in latency.values()]), bins=30)
    for key, value in latency.items():
        samples = np.sort(np.asarray(value.samples_ms))
        label = f"{key}: {value.backend}"
        hist.hist(samples, bins=bins, alpha=0.6, label=label)
        cdf.plot(samples, np.arange(1, len(samples) + 1) / len(samples), label=label)
    hist.set_xlabel("latency (ms)")
    hist.set_ylabel("iterations")
    hist.set_title("latency histogram")
    cdf.set_xlabel("latency (ms)")
    cdf.set_ylabel("fraction of iterations")
    cdf.set_title("latency CDF")
    cdf.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def main(argv: list[str] | None = None) -> int:
    return run(PROG, handle, build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
