"""manifest.json: what an engine was built with (TensorRT version, GPU, plugin library hash,
I/O profile), and the check that stops an engine from running anywhere else."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from ..errors import EngineError, EngineMismatch
from .plugin import import_tensorrt

MANIFEST_VERSION = 1
# What every mismatch message ends with.
REBUILD_HINT = "rebuild the engine on this device with `bqq-build BUNDLE --plugin LIB`"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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
    built_gpu = manifest.get("gpu") if isinstance(manifest.get("gpu"), dict) else {}
    if built_gpu.get("compute_capability") != device["compute_capability"]:
        problems.append(f"engine was built for compute capability {built_gpu.get('compute_capability')} "
                        f"({built_gpu.get('name')}), this GPU is {device['name']} with compute "
                        f"capability {device['compute_capability']}")
    elif built_gpu.get("name") != device["name"]:
        problems.append(f"engine was built on a {built_gpu.get('name')}, this GPU is a {device['name']} "
                        "(same compute capability, but TensorRT tunes plans per GPU model)")
    if plugin_path is not None:
        plugin = manifest.get("plugin") if isinstance(manifest.get("plugin"), dict) else {}
        expected, actual = plugin.get("sha256"), sha256_file(Path(plugin_path))
        if expected != actual:
            problems.append(f"plugin library {plugin_path} (sha256 {actual[:12]}) is not the one the "
                            f"engine was built with (sha256 {str(expected)[:12]})")
    if problems:
        raise EngineMismatch("; ".join(problems) + f" - {REBUILD_HINT}")
