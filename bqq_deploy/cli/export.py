"""bqq-export: quantise a model's linear layers with BQQ and write an ONNX / TensorRT bundle."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from ..errors import CheckFailed, InputError
from ..specs import DEFAULT_DIM_RANGE, DEFAULT_MAX_BATCH
from .common import add_verbosity, run

PROG = "bqq-export"
log = logging.getLogger(PROG)

EPILOG = """\
examples:
  # TorchScript model with a models/NAME.json sidecar giving its input shape
  bqq-export models/digits_vit.pt --target onnx -o out/digits_bits2

  # 3 bits, best preset, calibrated on 256 unlabeled samples (arrays keyed by input name)
  bqq-export model.pt --input-shape 1x3x224x224 --bits 3 --quality best \\
      --calib calib.npz -o out/vit_bits3

  # an ONNX file (no PyTorch model needed), keep the classifier head in float
  bqq-export model.onnx --exclude 'head*' -o out/bundle

  # TensorRT bundle to build on a Jetson (copy out/trt there and run ./build_engine.sh)
  bqq-export model.pt2 --target trt --build-on-device -o out/trt

  # two inputs with names and dtypes; the first dimension (batch) stays dynamic
  bqq-export encoder.pt --input-shape ids:1x128:int64 --input-shape mask:1x128:int64 -o out/enc

exit status: 0 success, 2 bad input (one-line error, nothing written), 1 failed check.
See docs/CLI.md for every flag and docs/ONNX.md for the files in a bundle.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Quantise the linear layers of MODEL (TorchScript .pt, torch.export .pt2 or "
                    ".onnx) with Binary Quadratic Quantization and write a bundle directory: "
                    "model.onnx (runs in stock ONNX Runtime), model.trt.onnx and "
                    "model.trt.fp16.onnx (BQQMatMul TensorRT plugin nodes), "
                    "layers.bqq.safetensors and report.json / report.md.")
    parser.add_argument("model", type=Path, help="model file: .pt/.pth/.ts (TorchScript), .pt2 "
                        "(torch.export), .onnx")
    parser.add_argument("-o", "--output", type=Path, required=True, help="bundle directory to write")
    parser.add_argument("--target", choices=("onnx", "trt"), default="onnx",
                        help="onnx: ONNX files only; trt: also build the TensorRT engine where "
                             "TensorRT is installed, else the bundle to build on the device "
                             "(default: onnx)")
    quant = parser.add_argument_group("quantiser (defaults: the --quality preset)")
    quant.add_argument("--quality", choices=("fast", "balanced", "best"), default="balanced",
                       help="solver preset: fast (100 annealing steps, a few seconds per "
                            "million weights), balanced (1,000 annealing steps, ~20 s per million "
                            "weights at 3 bits on a 2-core CPU), best (3,000 steps, ~3x "
                            "balanced) (default: balanced)")
    quant.add_argument("--bits", type=float,
                       help="stacks p, about p bits per weight (1..16); a fraction (2.5) is an "
                            "average over the layers, with --calib: each layer gets 2 or 3 "
                            "stacks, the extra ones where they lower the output error most")
    quant.add_argument("--group-size", type=_group_size, metavar="G|GRxGC",
                       help="block shape: 64 for 64x64 blocks, or 32x128")
    quant.add_argument("--steps", type=int, help="annealing steps per stack")
    quant.add_argument("--seed", type=int, help="solver seed (same seed, same device: same bits)")
    quant.add_argument("--device", help="solver device: auto, cpu, cuda, cuda:1 (default: auto)")
    quant.add_argument("--batch-weights", type=int, metavar="N",
                       help="most (padded) weights solved in one batch: bounds the solver's "
                            "memory, and batches are what torchrun ranks share out "
                            "(default: 4000000)")
    quant.add_argument("--exclude", action="append", default=[], metavar="PATTERN",
                       help="keep layers in float whose layer, weight or node name matches this "
                            "fnmatch pattern, e.g. 'head*' (repeatable)")
    quant.add_argument("--embeddings", choices=("bqq", "float"), default="bqq",
                       help="bqq: store embedding tables (Gather on a constant table) packed too; "
                            "float: leave them as they are (default: bqq)")
    quant.add_argument("--embedding-bits", type=int, metavar="P",
                       help="stacks for embedding tables (default: one more than --bits)")
    quant.add_argument("--calib", type=Path, metavar="FILE.npz",
                       help="unlabeled inputs for output-aware calibration: arrays keyed by "
                            "input name, or one array for a one-input model; without --val-data "
                            "20%% of its rows are held out for the verdict")
    cache = quant.add_mutually_exclusive_group()
    cache.add_argument("--cache-dir", type=Path, default=default_cache_dir(), metavar="DIR",
                       help="finished layers are kept here, so an interrupted or repeated export "
                            "skips them (default: $BQQ_CACHE_DIR, else $XDG_CACHE_HOME/bqq-deploy "
                            "or ~/.cache/bqq-deploy; currently %(default)s)")
    cache.add_argument("--no-cache", action="store_true", help="solve every layer, keep nothing")
    model = parser.add_argument_group("model inputs")
    model.add_argument("--input-shape", action="append", default=[], metavar="[NAME:]DIMS[:DTYPE]",
                       help="input shape such as 2x16x128 or ids:1x128:int64 (repeatable, one "
                            "per input); overrides shapes from the file or its .json sidecar; "
                            "the first dimension is the batch and stays dynamic")
    model.add_argument("--shapes", action="append", default=[], metavar="NAME:MIN/OPT/MAX",
                       help="shape range of an input for the TensorRT profile, as trtexec's "
                            "--minShapes/--optShapes/--maxShapes in one value, e.g. "
                            "input_ids:1x1/1x128/8x512 (repeatable; NAME:DIMS for a fixed shape; "
                            "inputs sharing a dynamic dim share its range). Default: batch "
                            f"1..{DEFAULT_MAX_BATCH} (opt 1), other dynamic dims "
                            f"{DEFAULT_DIM_RANGE[0]}..{DEFAULT_DIM_RANGE[2]} (opt "
                            f"{DEFAULT_DIM_RANGE[1]}, or the size in the validation data)")
    model.add_argument("--allow-pickle", action="store_true",
                       help="load a pickled nn.Module (torch.save(model)); unpickling runs "
                            "arbitrary code from the file, so only use files you trust")
    check = parser.add_argument_group("validation (docs/CLI.md: what the verdict rests on)")
    check.add_argument("--val-data", type=Path, metavar="FILE.npz",
                       help="real model inputs the verdict is measured on (arrays keyed by input "
                            "name, first dim = samples); default: the rows held out of --calib, "
                            "else none (parity only, accuracy not measured)")
    check.add_argument("--min-cosine", type=_tolerance, metavar="X",
                       help="fail (exit 1) when an output's cosine similarity to the original "
                            "model is below X on the validation data (default: off)")
    check.add_argument("--max-rel", type=_tolerance, metavar="X",
                       help="fail when max|BQQ - original| / max|original| exceeds X (default: off)")
    check.add_argument("--min-top1", type=_tolerance, metavar="X",
                       help="fail when the top-1 agreement of a logits output is below X "
                            "(default: off)")
    parser.add_argument("--force", action="store_true", help="replace a non-empty output directory")
    parser.add_argument("--build-on-device", action="store_true",
                        help="--target trt: do not build an engine here even if TensorRT is "
                             "installed; write the bundle to build on the target device")
    parser.add_argument("--no-validate", action="store_true",
                        help="skip the latency benchmark at the end (accuracy checks still run)")
    add_verbosity(parser)
    return parser


def _tolerance(text: str) -> float | None:
    if text.lower() in ("off", "none"):
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'off', got {text!r}") from None
    if value != value:  # NaN
        raise argparse.ArgumentTypeError("expected a number, got nan")
    return value


def _group_size(text: str):
    try:
        parts = [int(p) for p in text.lower().split("x")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not G or GRxGC") from None
    if len(parts) == 1:
        return parts[0]
    if len(parts) == 2:
        return tuple(parts)
    raise argparse.ArgumentTypeError(f"{text!r} is not G or GRxGC")


def default_cache_dir() -> Path:
    if os.environ.get("BQQ_CACHE_DIR"):
        return Path(os.environ["BQQ_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "bqq-deploy"


def make_config(args: argparse.Namespace):
    """BQQConfig from --quality and the explicit overrides."""
    from ..config import BQQConfig

    overrides = {key: value for key, value in (
        ("bits", args.bits), ("group_size", args.group_size), ("steps", args.steps),
        ("seed", args.seed), ("device", args.device), ("batch_weights", args.batch_weights))
        if value is not None}
    try:
        return BQQConfig.preset(args.quality, **overrides)
    except TypeError as exc:
        raise InputError(str(exc)) from None


def handle(args: argparse.Namespace) -> int:
    from ..export import ExportOptions, export_bundle, load_model
    from ..quantize import distributed
    from ..runtime import Tolerances

    for flag, path in (("--calib", args.calib), ("--val-data", args.val_data)):
        if path is not None and not path.is_file():
            raise InputError(f"{path}: {flag} file not found")
    if not args.no_cache and args.cache_dir.exists() and not args.cache_dir.is_dir():
        raise InputError(f"--cache-dir {args.cache_dir}: exists and is not a directory")
    options = ExportOptions(config=make_config(args), target=args.target, exclude=args.exclude,
                            calib=args.calib, val=args.val_data, shapes=args.shapes,
                            tolerances=Tolerances(args.min_cosine, args.max_rel, args.min_top1),
                            force=args.force, build_on_device=args.build_on_device,
                            progress=not args.quiet and sys.stderr.isatty(),
                            bench_iters=0 if args.no_validate else 50,
                            cache_dir=None if args.no_cache else args.cache_dir,
                            embeddings=args.embeddings, embedding_bits=args.embedding_bits)
    source = load_model(args.model, input_shapes=args.input_shape, shape_ranges=options.shapes,
                        allow_pickle=args.allow_pickle)
    try:
        report = export_bundle(source, args.output, options)
    finally:
        distributed.shutdown()
    if report is None:  # a torchrun rank other than 0: its share is solved and cached, rank 0 writes
        sys.stdout.flush()
        sys.stderr.flush()
        # Not through the interpreter's teardown: gloo's objects finalised there wait for
        # rank 0 to finish, and this rank's memory (a GB on a 0.5B model) with them.
        os._exit(0)
    if not args.quiet:
        print(summary(report, args.output))
    if not report.passed:
        raise CheckFailed("verdict FAILED: " + "; ".join(report.verdict["failures"])
                          + f" (report: {args.output / 'report.md'})")
    return 0


def summary(report, out: Path) -> str:
    """The short table printed at the end of an export (report: an ExportReport)."""
    q, files = report.quantised, report.sizes["files"]
    rows = [("layers quantised", f"{len(report.layers)} ({len(report.skipped)} left in float)"),
            ("bits per weight", f"{q['bits_per_weight']:.3f}"),
            ("quantised bytes vs fp16", f"{q['ratio_vs_fp16']:.4f}x"),
            ("model.onnx", f"{files['model.onnx'] / 2**20:.3f} MiB = "
                           f"{files['model.onnx'] / files['original fp32 ONNX']:.3f}x the fp32 original, "
                           f"{files['model.onnx'] / files['original fp16 ONNX (estimate)']:.3f}x fp16"),
            ("bundle size", f"{report.sizes['bundle_bytes'] / 2**20:.3f} MiB, every file")]
    if report.shape_ranges:
        rows.append(("shape ranges", report.shape_ranges))
    validation = report.validation
    inputs = validation.get("inputs", {})
    if inputs:
        rows.append(("checked on", "probe inputs only (random floats, integer inputs all 1)"
                     if inputs["source"] == "none" else f"{inputs['source']}, "
                     f"{inputs['samples']} samples" + (f" ({inputs['rule']})" if inputs.get("rule") else "")))
    for key, label in (("vs_bqq_reference", "parity vs float W_hat model"),
                       ("vs_original", "vs original")):
        for output in validation.get(key, {}).get("outputs", []):
            top1 = "" if output["top1"] is None else f", top-1 {output['top1']:.3f}"
            rows.append((f"{label} [{output['name']}]",
                         f"max rel {output['max_rel']:.2e}, cosine {output['cosine']:.6f}{top1}"))
    for name, lat in report.latency.items():
        rows.append((f"latency {name}", f"p50 {lat['p50_ms']:.3f} ms (batch {lat['batch_size']})"))
    if report.engine is not None:
        rows.append(("tensorrt", report.engine.message))
    rows.append(("bundle", f"{out}  (report.md)"))
    if report.verdict:
        rows.append(("verdict", f"{report.verdict['status']}: {report.verdict['note']}"))
        rows += [("", f"- {failure}") for failure in report.verdict["failures"]]
    if report.warnings:
        rows.append(("warnings", f"{len(report.warnings)} (also in report.md)"))
        rows += [("", f"- {line}") for line in report.warnings]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def main(argv: list[str] | None = None) -> int:
    return run(PROG, handle, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
