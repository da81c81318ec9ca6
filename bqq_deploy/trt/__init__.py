"""TensorRT: the plugin library (search, load, logging), engine builds with their manifest
checks, and the device kit that builds an engine on the target."""

from .build import build_engine, export_trt
from .device_kit import README_BEGIN, trtexec_command, write_device_kit
from .manifest import MANIFEST_VERSION, REBUILD_HINT, check_manifest, current_device, sha256_file
from .plugin import (PLUGIN_ENV, PLUGIN_LIBRARY, find_plugin_library, import_tensorrt,
                     load_plugin_library, make_trt_logger, repo_root)

__all__ = ["MANIFEST_VERSION", "PLUGIN_ENV", "PLUGIN_LIBRARY", "README_BEGIN", "REBUILD_HINT",
           "build_engine", "check_manifest", "current_device", "export_trt", "find_plugin_library",
           "import_tensorrt", "load_plugin_library", "make_trt_logger", "repo_root", "sha256_file",
           "trtexec_command", "write_device_kit"]
