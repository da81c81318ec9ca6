"""bqq-build: build a bundle's TensorRT engine (model.engine + manifest.json) on this device."""

from __future__ import annotations

import argparse
import logging
from dataclasses import replace
from pathlib import Path

from .. import trt
from ..bundle import Bundle
from ..errors import InputError
from ..specs import DEFAULT_MAX_BATCH, parse_shape_range, resolve_profiles
from .common import add_verbosity, run

PROG = "bqq-build"
log = logging.getLogger(PROG)

EPILOG = """\
examples:
  # on the Jetson, after building the plugin (./build_engine.sh does both)
  bqq-build out/trt --plugin out/trt/plugin/build/plugins/bqq_matmul/libbqq_trt_plugin.so
  bqq-build out/trt --fp32 --max-batch 16 --workspace-mb 1024

exit status: 0 engine written, 2 bad input or TensorRT / plugin missing, 1 build failed.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Build BUNDLE/model.engine with TensorRT from the bundle's model.trt.onnx "
                    "(or model.trt.fp16.onnx) and write manifest.json (TensorRT version, GPU, "
                    "plugin hash, I/O) so the engine is only ever loaded where it was built.")
    parser.add_argument("bundle", type=Path, help="bundle directory written by bqq-export --target trt")
    parser.add_argument("--plugin", type=Path, metavar="PATH",
                        help=f"{trt.PLUGIN_LIBRARY} (default: ${trt.PLUGIN_ENV}, "
                             "BUNDLE/plugin/build/..., <repo>/build/...)")
    precision = parser.add_mutually_exclusive_group()
    precision.add_argument("--fp16", dest="precision", action="store_const", const="fp16",
                           help="fp16 activations (model.trt.fp16.onnx; the default when present)")
    precision.add_argument("--fp32", dest="precision", action="store_const", const="fp32",
                           help="fp32 activations (model.trt.onnx)")
    parser.add_argument("--max-batch", type=int, metavar="N",
                        help="largest batch of the optimisation profile (default: the bundle's "
                             f"engine_build.json, else {DEFAULT_MAX_BATCH})")
    parser.add_argument("--shapes", action="append", default=[], metavar="NAME:MIN/OPT/MAX",
                        help="replace the profile range of an input, as bqq-export --shapes "
                             "(default: the bundle's engine_build.json)")
    parser.add_argument("--workspace-mb", type=int, metavar="MB",
                        help="TensorRT workspace limit (default: the bundle's, else TensorRT's)")
    parser.add_argument("--timing-cache", type=Path, metavar="FILE",
                        help="timing cache to reuse and update (default: ~/.cache/bqq_deploy/)")
    add_verbosity(parser)
    parser.set_defaults(precision="auto")
    return parser


def handle(args: argparse.Namespace) -> int:
    if not args.bundle.is_dir():
        raise InputError(f"{args.bundle} is not a bundle directory")
    if args.max_batch is not None and args.max_batch < 1:
        raise InputError(f"--max-batch must be >= 1, got {args.max_batch}")
    if args.workspace_mb is not None and args.workspace_mb < 1:
        raise InputError(f"--workspace-mb must be >= 1, got {args.workspace_mb}")
    input_specs = None
    if args.shapes:  # the stored shapes (symbolic dims included), with the new ranges
        stored = Bundle(args.bundle).read_build_settings().inputs
        input_specs = resolve_profiles([replace(s, min=None, opt=None, max=None) for s in stored],
                                       [parse_shape_range(text) for text in args.shapes])
    manifest = trt.build_engine(args.bundle, plugin_path=args.plugin, precision=args.precision,
                                input_specs=input_specs, max_batch=args.max_batch,
                                workspace_mb=args.workspace_mb, timing_cache=args.timing_cache,
                                log=log)
    log.info("engine: %s (%s, TensorRT %s, %s sm_%s)", args.bundle / Bundle.ENGINE,
             manifest["precision"], manifest["tensorrt_version"], manifest["gpu"]["name"],
             manifest["gpu"]["compute_capability"].replace(".", ""))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run(PROG, handle, build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
