"""Building model.engine with TensorRT on this machine, and the --target trt step of an
export (build here when TensorRT is installed, else leave the device kit)."""

from __future__ import annotations

import hashlib
import logging
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable

from ..atomic import atomic_write_bytes
from ..bundle import Bundle, BuildSettings
from ..errors import EngineBuildFailed, EngineError, InputError
from ..report import EngineOutcome
from ..specs import TensorSpec, profiles
from .device_kit import write_device_kit
from .manifest import MANIFEST_VERSION, current_device, sha256_file
from .plugin import find_plugin_library, import_tensorrt, load_plugin_library, make_trt_logger

logger = logging.getLogger(__name__)


def build_engine(bundle_dir: Path, *, plugin_path: str | os.PathLike | None = None,
                 precision: str = "auto", input_specs: Iterable | None = None,
                 max_batch: int | None = None, workspace_mb: int | None = None,
                 timing_cache: Path | None = None, log: logging.Logger = logger) -> dict:
    """Build bundle_dir/model.engine + manifest.json with TensorRT on this machine; returns
    the manifest.

    precision "fp16" parses model.trt.fp16.onnx, "fp32" model.trt.onnx, "auto" the fp16 file
    when present. The network is strongly typed: precision comes from the ONNX tensor types.
    input_specs and workspace_mb default to the bundle's engine_build.json (bqq-export
    writes it).
    """
    trt = import_tensorrt()
    bundle = Bundle(bundle_dir)
    onnx_path = bundle.trt_onnx(precision)
    if input_specs is None or workspace_mb is None:
        stored = bundle.read_build_settings()
        input_specs = stored.inputs if input_specs is None else input_specs
        workspace_mb = stored.workspace_mb if workspace_mb is None else workspace_mb
    specs = profiles(input_specs, max_batch)
    plugin = find_plugin_library(plugin_path, bundle_dir=bundle.root)
    device = current_device()
    trt_logger = make_trt_logger(trt)
    load_plugin_library(trt, plugin, trt_logger)

    builder = trt.Builder(trt_logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, trt_logger)
    log.info("parsing %s", onnx_path)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildFailed(f"TensorRT could not parse {onnx_path.name}: {errors}")
    config = builder.create_builder_config()
    if workspace_mb:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    profile = builder.create_optimization_profile()
    network_inputs = {network.get_input(i).name for i in range(network.num_inputs)}
    for spec in specs:
        if spec.name not in network_inputs:
            raise InputError(f"input spec {spec.name!r} is not an input of {onnx_path.name} "
                             f"(inputs: {sorted(network_inputs)})")
        profile.set_shape(spec.name, spec.min, spec.opt, spec.max)
    config.add_optimization_profile(profile)

    cache_path = timing_cache or _timing_cache_path(trt.__version__, device)
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
    if not config.set_timing_cache(cache, ignore_mismatch=False):
        log.warning("timing cache %s does not match this device; starting a new one", cache_path)
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)

    log.info("building the TensorRT engine (%s, batch %d..%d)", onnx_path.name,
             specs[0].min[0], specs[0].max[0])
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildFailed(f"TensorRT failed to build the engine: {trt_logger.errors()}")
    atomic_write_bytes(cache_path, [bytes(config.get_timing_cache().serialize())])
    engine_bytes = bytes(serialized)
    report = bundle.read_report()
    manifest = {
        "manifest_version": MANIFEST_VERSION,
        "engine": Bundle.ENGINE,
        "engine_sha256": hashlib.sha256(engine_bytes).hexdigest(),
        "source_onnx": onnx_path.name,
        "precision": "fp16" if onnx_path.name == Bundle.TRT_ONNX_FP16 else "fp32",
        "tensorrt_version": trt.__version__,
        "gpu": device,
        "plugin": {"library": plugin.name, "sha256": sha256_file(plugin)},
        "inputs": [spec.to_dict() for spec in specs],
        "outputs": [network.get_output(i).name for i in range(network.num_outputs)],
        "quantiser": None if report is None else report.config,
        "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    atomic_write_bytes(bundle / Bundle.ENGINE, [engine_bytes])
    bundle.write_manifest(manifest)
    log.info("wrote %s (%.1f MB) and %s", bundle / Bundle.ENGINE, len(engine_bytes) / 1e6,
             Bundle.MANIFEST)
    return manifest


def _timing_cache_path(trt_version: str, device: dict) -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "bqq_deploy"
    arch = device["compute_capability"].replace(".", "")
    return root / f"trt-{trt_version}-sm{arch}.timing.cache"


def export_trt(bundle_dir: Path, *, input_specs: Iterable, build_on_device: bool,
               workspace_mb: int | None = None, max_batch: int | None = None,
               plugin_path: str | os.PathLike | None = None,
               log: logging.Logger = logger) -> EngineOutcome:
    """Finish a --target trt export in bundle_dir (which holds model.trt[.fp16].onnx).

    Always writes the device kit (plugin sources, engine_build.json, build_engine.sh, README
    section). Then, where TensorRT imports and build_on_device is false, builds model.engine
    + manifest.json here ("engine"); otherwise says what to run on the device ("bundle").
    """
    bundle = Bundle(bundle_dir)
    bundle.trt_onnx("auto")
    specs: list[TensorSpec] = profiles(input_specs, max_batch)
    write_device_kit(bundle, BuildSettings(specs, workspace_mb))
    if not build_on_device:
        try:
            import_tensorrt()
        except EngineError as exc:
            log.debug("%s", exc)
        else:
            manifest = build_engine(bundle.root, plugin_path=plugin_path, input_specs=specs,
                                    workspace_mb=workspace_mb, log=log)
            return EngineOutcome("engine", f"built {bundle / Bundle.ENGINE} for "
                                 f"{manifest['gpu']['name']} with TensorRT {manifest['tensorrt_version']}",
                                 manifest)
    reason = "as asked (--build-on-device)" if build_on_device else "(TensorRT is not installed here)"
    return EngineOutcome("bundle", f"no engine built {reason}: copy {bundle.root} to the target and "
                                   f"run ./{Bundle.BUILD_SCRIPT} there (see {bundle / Bundle.README})")
