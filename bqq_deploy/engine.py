"""TensorRT engines for an exported bundle: build model.engine where TensorRT is installed,
or make the bundle self-sufficient (plugin sources, build script, instructions) so it can be
built on the target device; and the safety checks that stop an engine from running on a
TensorRT version, GPU or plugin library it was not built for.

Bundle files this module reads: model.trt.onnx / model.trt.fp16.onnx (BQQMatMul plugin
nodes, written by bqq-export), report.json. Files it writes: model.engine, manifest.json,
engine_build.json (input profile for a later build), plugin/ (sources), build_engine.sh and a
section of README.md.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from .format import atomic_write_bytes

logger = logging.getLogger(__name__)

PLUGIN_LIBRARY = "libbqq_trt_plugin.so"
PLUGIN_ENV = "BQQ_PLUGIN_PATH"
TRT_ONNX = "model.trt.onnx"
TRT_ONNX_FP16 = "model.trt.fp16.onnx"
ENGINE = "model.engine"
MANIFEST = "manifest.json"
BUILD_CONFIG = "engine_build.json"
BUILD_SCRIPT = "build_engine.sh"
PLUGIN_DIR = "plugin"
MANIFEST_VERSION = 1
DEFAULT_MAX_BATCH = 8
README_BEGIN = "<!-- bqq-engine: begin -->"
README_END = "<!-- bqq-engine: end -->"
# What bqq-build rebuilds after a mismatch; every check message ends with it.
REBUILD_HINT = "rebuild the engine on this device with `bqq-build BUNDLE --plugin LIB`"
# Native sources copied into a bundle, relative to the repository root (the repo's own
# top-level CMakeLists.txt builds them; runtime/ brings the bqq-infer sample app).
NATIVE_SOURCES = ("CMakeLists.txt", "cmake", "plugins/bqq_matmul", "runtime")


class EngineError(RuntimeError):
    """TensorRT is missing, a build failed, or a file the engine needs is missing."""


class EngineBuildFailed(EngineError):
    """TensorRT could not parse the ONNX file or build the engine."""


class EngineMismatch(EngineError):
    """An engine does not match this device, TensorRT version or plugin library."""


def repo_root() -> Path:
    """Root of the source tree this package runs from (editable install: parent of bqq_deploy)."""
    return Path(__file__).resolve().parent.parent


def import_tensorrt():
    """Import the tensorrt module or raise EngineError saying how to get it."""
    try:
        import tensorrt
    except ImportError as exc:
        raise EngineError(
            f"TensorRT's Python package is not importable ({exc}); on a Jetson it comes with "
            "JetPack (python3-libnvinfer), on x86 `pip install tensorrt` - see docs/JETSON.md") from exc
    return tensorrt


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --- plugin library ---------------------------------------------------------------------

def plugin_search_paths(explicit: str | os.PathLike | None = None, *,
                        bundle_dir: Path | None = None) -> list[Path]:
    """Where the plugin library is looked for, in order: the explicit path (a file or a
    directory), each entry of $BQQ_PLUGIN_PATH, the bundle's plugin/build, <repo>/build."""
    entries: list[Path] = []
    if explicit:
        entries.append(Path(explicit))
    entries += [Path(p) for p in os.environ.get(PLUGIN_ENV, "").split(os.pathsep) if p]
    if bundle_dir is not None:
        entries.append(Path(bundle_dir) / PLUGIN_DIR / "build" / "plugins" / "bqq_matmul")
    entries.append(repo_root() / "build" / "plugins" / "bqq_matmul")
    return [p if p.suffix == ".so" else p / PLUGIN_LIBRARY for p in entries]


def find_plugin_library(explicit: str | os.PathLike | None = None, *,
                        bundle_dir: Path | None = None) -> Path:
    """The first existing plugin library on the search path; EngineError names every path
    tried when there is none (an explicit path that does not exist is an error by itself)."""
    if explicit and not Path(explicit).exists():
        raise EngineError(f"plugin library {explicit} does not exist")
    searched = plugin_search_paths(explicit, bundle_dir=bundle_dir)
    for path in searched:
        if path.is_file():
            return path.resolve()
    raise EngineError(f"{PLUGIN_LIBRARY} not found; searched: {', '.join(map(str, searched))}. "
                      f"Build it (cmake, see docs/JETSON.md) and pass --plugin or set {PLUGIN_ENV}")


def load_plugin_library(trt, path: Path, trt_logger=None):
    """Register the plugin's creators with TensorRT (IPluginRegistry::loadLibrary, the path
    trtexec --dynamicPlugins uses: the library exports getCreators / setLoggerFinder)."""
    if trt_logger is not None:
        trt.init_libnvinfer_plugins(trt_logger, "")
    handle = trt.get_plugin_registry().load_library(str(path))
    if handle is None:
        raise EngineError(f"TensorRT could not load the plugin library {path} (wrong TensorRT "
                          "version or architecture? see the TensorRT log above)")
    return handle


def explain_plugin_error(message: str, compute_capability: str | None = None) -> str:
    """Turn a plugin failure into advice. BQQ_ERR_UNSUPPORTED_ARCH (status 3) means the
    library holds no kernel image for this GPU."""
    if "UNSUPPORTED_ARCH" in message or "no kernel image" in message:
        arch = f"sm_{compute_capability.replace('.', '')}" if compute_capability else "this GPU's"
        cmake_arch = compute_capability.replace(".", "") if compute_capability else "<arch>"
        return (f"{message} - the BQQ plugin library was built without {arch} kernels; rebuild it "
                f"with -DCMAKE_CUDA_ARCHITECTURES={cmake_arch} (or native) on this device")
    return message


# --- input profiles -----------------------------------------------------------------------

@dataclass(frozen=True)
class InputProfile:
    """Optimisation-profile shapes of one engine input."""

    name: str
    dtype: str
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    def to_dict(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "min": list(self.min),
                "opt": list(self.opt), "max": list(self.max)}


def input_profiles(input_specs: Iterable[Any], max_batch: int | None = None) -> list[InputProfile]:
    """Normalise input specs to profiles. Each spec is a dict {"name", "dtype"?, and either
    "min"/"opt"/"max" or "shape"} or an object with .name/.shape/.dtype (runtime.TensorSpec).
    A dynamic dim (None, -1 or a name) is allowed in the batch position only and becomes
    1..max_batch (opt 1); max_batch also overrides a dict's batch range when given."""
    profiles = []
    for spec in input_specs:
        get = spec.get if isinstance(spec, dict) else (lambda key, default=None: getattr(spec, key, default))
        name = get("name")
        if not name:
            raise ValueError(f"input spec without a name: {spec!r}")
        dtype = np.dtype(get("dtype") or "float32").name
        if get("min") is not None:
            shapes = [tuple(int(d) for d in get(key)) for key in ("min", "opt", "max")]
        else:
            shapes = _shapes_from_dims(name, get("shape"), max_batch or DEFAULT_MAX_BATCH)
        lo, mid, hi = shapes
        if max_batch is not None and lo and lo[0] != hi[0]:  # a dynamic batch: new upper bound
            lo, mid, hi = [(min(s[0], max_batch),) + s[1:] for s in (lo, mid)] + [(max_batch,) + hi[1:]]
        if not (len(lo) == len(mid) == len(hi)) or any(
                not 1 <= a <= b <= c for a, b, c in zip(lo, mid, hi)):
            raise ValueError(f"input {name}: profile needs 1 <= min <= opt <= max per dim, "
                             f"got min {lo}, opt {mid}, max {hi}")
        profiles.append(InputProfile(name, dtype, lo, mid, hi))
    if not profiles:
        raise ValueError("no input specs given")
    return profiles


def _shapes_from_dims(name: str, dims, max_batch: int) -> list[tuple[int, ...]]:
    if dims is None:
        raise ValueError(f"input {name}: no shape given")
    dims = list(dims)
    if not dims:
        raise ValueError(f"input {name}: a scalar input has no batch dim to build a profile on")
    # The first dim is the batch and stays dynamic (docs/CLI.md) even when the spec gives a
    # number (e.g. from --input-shape 4x...): 1 .. max_batch, optimised for the given size.
    batch = int(dims[0]) if isinstance(dims[0], (int, np.integer)) and dims[0] > 0 else 1
    lo, opt, hi = [1], [batch], [max(batch, max_batch)]
    for i, dim in enumerate(dims[1:], start=1):
        if not (isinstance(dim, (int, np.integer)) and dim > 0):
            raise ValueError(f"input {name}: dim {i} is dynamic ({dim!r}); give min/opt/max "
                             "shapes for it (only the batch dim gets a default range)")
        for shape in (lo, opt, hi):
            shape.append(int(dim))
    return [tuple(lo), tuple(opt), tuple(hi)]


# --- manifest checks ------------------------------------------------------------------------

def current_device() -> dict:
    """Name and compute capability ("8.7") of CUDA device 0, from torch."""
    import torch

    if not torch.cuda.is_available():
        raise EngineError("no CUDA device visible: TensorRT engines need a GPU")
    major, minor = torch.cuda.get_device_capability(0)
    return {"name": torch.cuda.get_device_name(0), "compute_capability": f"{major}.{minor}"}


def check_manifest(manifest: dict, *, plugin_path: str | os.PathLike | None,
                   trt_version: str | None = None, device: dict | None = None) -> None:
    """Raise EngineMismatch when the engine's manifest names another TensorRT version, GPU
    or compute capability, or plugin library (by sha256) than the ones in use here.

    trt_version / device default to the installed TensorRT and CUDA device 0 (tests pass
    them explicitly). plugin_path None skips the plugin check (an engine without plugins).
    """
    problems = []
    if manifest.get("manifest_version") != MANIFEST_VERSION:
        problems.append(f"manifest version {manifest.get('manifest_version')!r} is not "
                        f"{MANIFEST_VERSION}")
    built_trt = str(manifest.get("tensorrt_version", "?"))
    if trt_version is None:
        trt_version = import_tensorrt().__version__
    # Plans are tied to the exact TensorRT release (major.minor.patch); build suffixes differ.
    if built_trt.split(".")[:3] != str(trt_version).split(".")[:3]:
        problems.append(f"engine was built with TensorRT {built_trt}, this is TensorRT {trt_version}")
    device = device or current_device()
    built_gpu = manifest.get("gpu", {})
    if built_gpu.get("compute_capability") != device["compute_capability"]:
        problems.append(f"engine was built for compute capability {built_gpu.get('compute_capability')} "
                        f"({built_gpu.get('name')}), this GPU is {device['name']} with compute "
                        f"capability {device['compute_capability']}")
    elif built_gpu.get("name") != device["name"]:
        problems.append(f"engine was built on a {built_gpu.get('name')}, this GPU is a {device['name']} "
                        "(same compute capability, but TensorRT tunes plans per GPU model)")
    if plugin_path is not None:
        expected = manifest.get("plugin", {}).get("sha256")
        actual = sha256_file(Path(plugin_path))
        if expected != actual:
            problems.append(f"plugin library {plugin_path} (sha256 {actual[:12]}) is not the one the "
                            f"engine was built with (sha256 {str(expected)[:12]})")
    if problems:
        raise EngineMismatch("; ".join(problems) + f" - {REBUILD_HINT}")


def read_manifest(engine_path: Path) -> dict | None:
    path = Path(engine_path).with_name(MANIFEST)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise EngineError(f"{path}: not valid JSON ({exc})") from exc


# --- building ---------------------------------------------------------------------------

def build_engine(bundle_dir: Path, *, plugin_path: str | os.PathLike | None = None,
                 precision: str = "auto", input_specs: Iterable[Any] | None = None,
                 max_batch: int | None = None, workspace_mb: int | None = None,
                 timing_cache: Path | None = None, log: logging.Logger = logger) -> dict:
    """Build bundle_dir/model.engine + manifest.json with TensorRT on this machine.

    precision "fp16" parses model.trt.fp16.onnx, "fp32" model.trt.onnx, "auto" the fp16 file
    when present. The network is strongly typed: precision comes from the ONNX tensor types.
    input_specs default to the bundle's engine_build.json (written by bqq-export).
    """
    trt = import_tensorrt()
    bundle_dir = Path(bundle_dir)
    onnx_path = _pick_trt_onnx(bundle_dir, precision)
    profiles = input_profiles(input_specs if input_specs is not None else _stored_specs(bundle_dir),
                              max_batch)
    plugin = find_plugin_library(plugin_path, bundle_dir=bundle_dir)
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
    for spec in profiles:
        if spec.name not in network_inputs:
            raise EngineError(f"input spec {spec.name!r} is not an input of {onnx_path.name} "
                              f"(inputs: {sorted(network_inputs)})")
        profile.set_shape(spec.name, spec.min, spec.opt, spec.max)
    config.add_optimization_profile(profile)

    cache_path = timing_cache or _timing_cache_path(trt.__version__, device)
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
    if not config.set_timing_cache(cache, ignore_mismatch=False):
        log.warning("timing cache %s does not match this device; starting a new one", cache_path)
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)

    log.info("building the TensorRT engine (%s, batch %d..%d)", onnx_path.name,
             profiles[0].min[0], profiles[0].max[0])
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildFailed("TensorRT failed to build the engine: "
                          + explain_plugin_error(trt_logger.errors(), device["compute_capability"]))
    atomic_write_bytes(cache_path, [bytes(config.get_timing_cache().serialize())])
    engine_bytes = bytes(serialized)
    outputs = [network.get_output(i).name for i in range(network.num_outputs)]
    manifest = {
        "manifest_version": MANIFEST_VERSION,
        "engine": ENGINE,
        "engine_sha256": hashlib.sha256(engine_bytes).hexdigest(),
        "source_onnx": onnx_path.name,
        "precision": "fp16" if onnx_path.name == TRT_ONNX_FP16 else "fp32",
        "tensorrt_version": trt.__version__,
        "gpu": device,
        "plugin": {"library": plugin.name, "sha256": sha256_file(plugin)},
        "inputs": [p.to_dict() for p in profiles],
        "outputs": outputs,
        "bqq": _bqq_settings(bundle_dir),
        "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    atomic_write_bytes(bundle_dir / ENGINE, [engine_bytes])
    _write_json(bundle_dir / MANIFEST, manifest)
    log.info("wrote %s (%.1f MB) and %s", bundle_dir / ENGINE, len(engine_bytes) / 1e6, MANIFEST)
    return manifest


def _pick_trt_onnx(bundle_dir: Path, precision: str) -> Path:
    if precision not in ("auto", "fp16", "fp32"):
        raise ValueError(f"precision must be auto, fp16 or fp32, got {precision!r}")
    names = {"fp16": [TRT_ONNX_FP16], "fp32": [TRT_ONNX], "auto": [TRT_ONNX_FP16, TRT_ONNX]}[precision]
    for name in names:
        if (bundle_dir / name).is_file():
            return bundle_dir / name
    raise FileNotFoundError(f"{bundle_dir} has no {' or '.join(names)} (export it with "
                            "`bqq-export ... --target trt`)")


def _stored_specs(bundle_dir: Path) -> list[dict]:
    path = bundle_dir / BUILD_CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: pass the input shapes (re-export the bundle)")
    return json.loads(path.read_text())["inputs"]


def _timing_cache_path(trt_version: str, device: dict) -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "bqq_deploy"
    arch = device["compute_capability"].replace(".", "")
    return root / f"trt-{trt_version}-sm{arch}.timing.cache"


def _bqq_settings(bundle_dir: Path) -> dict:
    """The quantiser settings recorded by bqq-export (report.json), without per-layer data."""
    path = bundle_dir / "report.json"
    if not path.is_file():
        return {}
    report = json.loads(path.read_text())
    return {key: value for key, value in report.items()
            if not isinstance(value, (list, dict)) or key in ("config", "bqq", "settings")}


def _write_json(path: Path, data: dict) -> None:
    atomic_write_bytes(path, [(json.dumps(data, indent=2, sort_keys=True) + "\n").encode()])


def make_trt_logger(trt):
    """A TensorRT ILogger that forwards to logging and keeps error lines (.lines, .errors())
    for exception messages. Built per call because the base class lives in tensorrt."""

    class CapturingLogger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.lines: list[str] = []

        def log(self, severity, msg):
            # int(): TensorRT's pybind11 enums are not guaranteed to be ordered.
            if int(severity) <= int(trt.ILogger.Severity.ERROR):
                self.lines.append(msg)
                logger.error("TensorRT: %s", msg)
            elif int(severity) <= int(trt.ILogger.Severity.WARNING):
                logger.warning("TensorRT: %s", msg)
            else:
                logger.debug("TensorRT: %s", msg)

        def errors(self) -> str:
            return "; ".join(self.lines) or "no error message (see the log)"

    return CapturingLogger()


# --- device bundle -------------------------------------------------------------------------

def write_device_bundle(bundle_dir: Path, profiles: Sequence[InputProfile], *,
                        workspace_mb: int | None = None, source_root: Path | None = None) -> list[Path]:
    """Make bundle_dir buildable on the target: copy the native sources into plugin/, write
    engine_build.json, build_engine.sh and the README section. Returns the files written."""
    bundle_dir = Path(bundle_dir)
    source_root = Path(source_root or repo_root())
    missing = [rel for rel in NATIVE_SOURCES if not (source_root / rel).exists()]
    if missing or not (source_root / "plugins/bqq_matmul/CMakeLists.txt").is_file():
        raise EngineError(f"plugin sources not found under {source_root} (missing: "
                          f"{', '.join(missing) or 'plugins/bqq_matmul/CMakeLists.txt'}); the "
                          "device bundle needs a source checkout (pip install -e .)")
    staging = Path(tempfile.mkdtemp(prefix=f".{PLUGIN_DIR}.", dir=bundle_dir))
    try:
        ignore = shutil.ignore_patterns("build", "build-*", "__pycache__", "*.o", "*.so", ".*")
        for rel in NATIVE_SOURCES:
            src, dst = source_root / rel, staging / rel
            if src.is_dir():
                shutil.copytree(src, dst, ignore=ignore)
            else:
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dst)
        target = bundle_dir / PLUGIN_DIR
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _write_json(bundle_dir / BUILD_CONFIG, {"inputs": [p.to_dict() for p in profiles],
                                            "workspace_mb": workspace_mb})
    script = bundle_dir / BUILD_SCRIPT
    atomic_write_bytes(script, [_build_script(profiles).encode()])
    script.chmod(0o755)
    readme = bundle_dir / "README.md"
    atomic_write_bytes(readme, [_with_readme_section(readme, _readme_section(profiles, _pick_trt_onnx(bundle_dir, "auto").name)).encode()])
    return [bundle_dir / PLUGIN_DIR, bundle_dir / BUILD_CONFIG, script, readme]


def _shape_arg(profiles: Sequence[InputProfile], which: str) -> str:
    return ",".join(f"{p.name}:{'x'.join(map(str, getattr(p, which)))}" for p in profiles)


def trtexec_command(profiles: Sequence[InputProfile], plugin: str, onnx_name: str = TRT_ONNX_FP16) -> str:
    return (f"trtexec --onnx={onnx_name} --dynamicPlugins={plugin} --stronglyTyped "
            f"--minShapes={_shape_arg(profiles, 'min')} --optShapes={_shape_arg(profiles, 'opt')} "
            f"--maxShapes={_shape_arg(profiles, 'max')} --saveEngine={ENGINE}")


def _build_script(profiles: Sequence[InputProfile]) -> str:
    plugin = f"{PLUGIN_DIR}/build/plugins/bqq_matmul/{PLUGIN_LIBRARY}"
    return f"""#!/bin/sh
# Build the BQQ TensorRT plugin and model.engine on this device (written by bqq-export).
# Environment: CUDA_ARCHS (default: native), TensorRT_ROOT (default: JetPack/system paths).
set -eu
cd "$(dirname "$0")"
cmake -S {PLUGIN_DIR} -B {PLUGIN_DIR}/build -DCMAKE_BUILD_TYPE=Release \\
    -DCMAKE_CUDA_ARCHITECTURES="${{CUDA_ARCHS:-native}}" ${{TensorRT_ROOT:+-DTensorRT_ROOT="$TensorRT_ROOT"}}
cmake --build {PLUGIN_DIR}/build -j "$(nproc)"
test -f {plugin} || {{ echo "plugin was not built: {plugin} (was TensorRT found?)" >&2; exit 1; }}
if command -v bqq-build >/dev/null 2>&1; then
    bqq-build . --plugin {plugin} "$@"
else
    precision_file={TRT_ONNX_FP16}
    [ -f "$precision_file" ] || precision_file={TRT_ONNX}
    {trtexec_command(profiles, plugin, '"$precision_file"')}
fi
"""


def _readme_section(profiles: Sequence[InputProfile], onnx_name: str) -> str:
    plugin = f"{PLUGIN_DIR}/build/plugins/bqq_matmul/{PLUGIN_LIBRARY}"
    lines = [
        README_BEGIN,
        "## Building the TensorRT engine on the device",
        "",
        "A TensorRT engine only runs on the TensorRT version and GPU it was built with, so it",
        "is built on the target (e.g. a Jetson Orin with JetPack 6.1+, TensorRT 10.3). Copy this",
        "whole directory there, then, in it:",
        "",
        "```sh",
        "./build_engine.sh            # = the two steps below",
        f"cmake -S {PLUGIN_DIR} -B {PLUGIN_DIR}/build -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=native",
        f"cmake --build {PLUGIN_DIR}/build -j",
        f"bqq-build . --plugin {plugin}",
        "```",
        "",
        "`native` needs CMake >= 3.24; with JetPack 6's CMake 3.22 run `CUDA_ARCHS=87 ./build_engine.sh`",
        "(Orin; `110` for Thor).",
        "",
        "Without the bqq-deploy Python package, TensorRT's own trtexec builds the same engine:",
        "",
        "```sh",
        trtexec_command(profiles, plugin, onnx_name),
        "```",
        "",
        "Input profile (min / opt / max): "
        + "; ".join(f"`{p.name}` {list(p.min)} / {list(p.opt)} / {list(p.max)}" for p in profiles),
        "",
        "Then check it against the original model: `bqq-validate . --reference MODEL -o validation`,",
        f"or run it from C++: `{PLUGIN_DIR}/build/runtime/bqq-infer --engine {ENGINE} --plugin {plugin} "
        "--input NAME=FILE.npy`. See docs/JETSON.md of bqq-deploy.",
        README_END,
    ]
    return "\n".join(lines) + "\n"


def _with_readme_section(readme: Path, section: str) -> str:
    """The README text with our section replaced (or appended), other text kept."""
    text = readme.read_text() if readme.is_file() else "# BQQ deployment bundle\n"
    if README_BEGIN in text and README_END in text:
        head, rest = text.split(README_BEGIN, 1)
        return head + section.rstrip("\n") + rest.split(README_END, 1)[1]
    return text.rstrip("\n") + "\n\n" + section


def export_trt(bundle_dir: Path, *, input_specs: Iterable[Any], build_on_device: bool,
               workspace_mb: int | None = None, max_batch: int | None = None,
               plugin_path: str | os.PathLike | None = None,
               log: logging.Logger = logger) -> dict:
    """Finish a --target trt export in bundle_dir (which holds model.trt[.fp16].onnx).

    Always writes the device bundle (plugin sources, engine_build.json, build_engine.sh,
    README section). Then, where TensorRT imports and build_on_device is false, builds
    model.engine + manifest.json here: returns {"status": "engine", "manifest": ..., "message"}.
    Otherwise returns {"status": "bundle", "message": what to run on the device}.
    """
    bundle_dir = Path(bundle_dir)
    _pick_trt_onnx(bundle_dir, "auto")
    profiles = input_profiles(input_specs, max_batch)
    write_device_bundle(bundle_dir, profiles, workspace_mb=workspace_mb)
    if not build_on_device:
        try:
            import_tensorrt()
        except EngineError as exc:
            log.info("%s", exc)
        else:
            manifest = build_engine(bundle_dir, plugin_path=plugin_path, input_specs=profiles,
                                    workspace_mb=workspace_mb, log=log)
            return {"status": "engine", "manifest": manifest,
                    "message": f"built {bundle_dir / ENGINE} for {manifest['gpu']['name']} "
                               f"with TensorRT {manifest['tensorrt_version']}"}
    reason = "as asked (--build-on-device)" if build_on_device else "(TensorRT is not installed here)"
    return {"status": "bundle",
            "message": f"no engine built {reason}: copy {bundle_dir} to the target and run "
                       f"./{BUILD_SCRIPT} there (see {bundle_dir / 'README.md'})"}
