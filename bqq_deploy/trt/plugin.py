"""TensorRT itself: importing it, finding and loading the BQQ plugin library, and a logger that
keeps error lines for messages. (What to do about an unsupported GPU architecture is said once,
by the kernel library itself, plugins/bqq_matmul/bqq_launch.cu; it reaches users unchanged.)"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ..bundle import Bundle
from ..errors import EngineError

logger = logging.getLogger(__name__)

PLUGIN_LIBRARY = "libbqq_trt_plugin.so"
PLUGIN_ENV = "BQQ_PLUGIN_PATH"
# Where the plugin library lies in a build tree of this repository or of a bundle's sources.
BUILD_SUBDIR = Path("build") / "plugins" / "bqq_matmul"


def repo_root() -> Path:
    """Root of the source tree this package runs from (editable install: parent of bqq_deploy)."""
    return Path(__file__).resolve().parents[2]


def import_tensorrt():
    """The tensorrt module, or EngineError saying how to get it."""
    try:
        import tensorrt
    except ImportError as exc:
        raise EngineError(
            f"TensorRT's Python package is not importable ({exc}); on a Jetson it comes with "
            "JetPack (python3-libnvinfer), on x86 `pip install tensorrt` - see docs/JETSON.md") from exc
    return tensorrt


def plugin_search_paths(explicit: str | os.PathLike | None = None, *,
                        bundle_dir: Path | None = None) -> list[Path]:
    """Where the plugin library is looked for, in order: the explicit path (a file or a
    directory), each entry of $BQQ_PLUGIN_PATH, the bundle's plugin/build, <repo>/build."""
    entries: list[Path] = []
    if explicit:
        entries.append(Path(explicit))
    entries += [Path(p) for p in os.environ.get(PLUGIN_ENV, "").split(os.pathsep) if p]
    if bundle_dir is not None:
        entries.append(Path(bundle_dir) / Bundle.PLUGIN_DIR / BUILD_SUBDIR)
    entries.append(repo_root() / BUILD_SUBDIR)
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
