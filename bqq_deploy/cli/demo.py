"""The README's main command (`make demo`): quantise the bundled digits ViT at 2 and 3 bits,
export TensorRT-ready bundles to out/demo/bits{2,3}, and compare held-out accuracy, sizes
and ONNX Runtime latency of the original and the BQQ models."""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from .common import add_verbosity, run

MODEL = Path(__file__).resolve().parents[2] / "models" / "digits_vit.pt"


def accuracy(model_path: Path, images: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy of an ONNX file in ONNX Runtime (CPU)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    logits = np.concatenate([session.run(None, {name: images[i:i + 256]})[0]
                             for i in range(0, len(images), 256)])
    return float((logits.argmax(-1) == labels).mean())


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def handle(args: argparse.Namespace) -> int:
    import onnx

    from ..config import BQQConfig
    from ..datasets import digits_split
    from ..export import ExportOptions, export_bundle, load_model
    from ..export.pipeline import fp32_onnx

    log = logging.getLogger("bqq-demo")
    x_train, _, x_test, y_test = digits_split()
    source = load_model(args.model)
    rows = [["model", "bits/weight", "held-out acc.", "quantised layers", "model.onnx",
             "ORT p50 (batch 64)", "time"]]
    results = {}
    with tempfile.TemporaryDirectory(prefix="bqq-demo-") as scratch:
        original = Path(scratch) / "original.onnx"
        onnx.save(fp32_onnx(source), str(original))
        fp32_acc = accuracy(original, x_test, y_test)
        calib = None
        if args.calib_samples:
            calib = Path(scratch) / "calib.npz"
            np.savez(calib, image=x_train[:args.calib_samples])
        feeds = [{"image": x_test[i:i + 64]} for i in range(0, 256, 64)]
        for bits in args.bits:
            out = args.out / f"bits{bits}"
            log.info("quantising %s to %d bits (%s preset) -> %s", args.model.name, bits,
                     args.quality, out)
            start = time.perf_counter()
            config = BQQConfig.preset(args.quality, bits=bits, **(
                {"group_size": args.group_size} if args.group_size else {}))
            report = export_bundle(source, out, ExportOptions(
                config=config, target="trt", calib=calib, force=True, exclude=args.exclude,
                progress=not args.quiet, validation_inputs=feeds, bench_iters=30))
            seconds = time.perf_counter() - start
            results[bits] = (accuracy(out / "model.onnx", x_test, y_test), report, seconds)
    first = next(iter(results.values()))[1]
    q16 = first.quantised
    rows.append(["original fp32", "32", f"{100 * fp32_acc:.2f}%",
                 f"{q16['fp16_bytes'] * 2 / 1024:.1f} KiB (fp16: {q16['fp16_bytes'] / 1024:.1f})",
                 f"{first.sizes['files']['original fp32 ONNX'] / 1024:.1f} KiB",
                 f"{first.latency['original fp32 ONNX']['p50_ms']:.3f} ms", "-"])
    for bits, (acc, report, seconds) in results.items():
        q = report.quantised
        rows.append([f"BQQ {bits}-bit", f"{q['bits_per_weight']:.2f}", f"{100 * acc:.2f}%",
                     f"{q['bqq_bytes'] / 1024:.1f} KiB ({q['ratio_vs_fp16']:.3f}x fp16)",
                     f"{report.sizes['files']['model.onnx'] / 1024:.1f} KiB",
                     f"{report.latency['model.onnx']['p50_ms']:.3f} ms", f"{seconds:.0f} s"])
    print(f"\nDigits ViT ({args.model.name}), {len(y_test)} held-out images, "
          f"{args.quality} preset, {'calibrated on %d training images' % args.calib_samples if args.calib_samples else 'data-free'}\n")
    print(_table(rows))
    print(f"\nBundles (model.onnx for ONNX Runtime, model.trt*.onnx + build_engine.sh for "
          f"TensorRT, report.md): {', '.join(str(args.out / f'bits{b}') for b in results)}")
    for bits, (_, report, _) in results.items():
        print(f"  bits{bits}: {report.engine.message}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bqq_deploy.cli.demo", description=__doc__)
    parser.add_argument("--model", type=Path, default=MODEL, help="TorchScript digits model")
    parser.add_argument("--out", type=Path, default=Path("out/demo"), help="bundle root")
    parser.add_argument("--bits", type=int, nargs="+", default=[2, 3])
    parser.add_argument("--exclude", action="append", default=[], metavar="PATTERN",
                        help="keep layers matching PATTERN in float (repeatable)")
    parser.add_argument("--quality", choices=("fast", "balanced", "best"), default="balanced",
                        help="solver preset, as for bqq-export (default: balanced)")
    parser.add_argument("--group-size", type=int, default=None, help="block size (default: preset)")
    parser.add_argument("--calib-samples", type=int, default=512,
                        help="calibrate on this many training images (0: data-free)")
    add_verbosity(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run("bqq-demo", handle, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
