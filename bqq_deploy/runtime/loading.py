"""runtime.load: the back end for a model, chosen from a table of file kinds."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Callable, Sequence

from ..bundle import Bundle
from ..errors import InputError
from ..model_files import SUFFIXES, kind_of
from .base import Backend
from .onnxruntime_backend import OnnxRuntimeBackend
from .tensorrt_backend import TensorRTBackend
from .torch_backend import TorchBackend

BACKENDS = ("auto", "onnxruntime", "tensorrt", "torch")

# file kind (bqq_deploy.model_files) -> (back end, loader(path, plugin_path, providers))
LOADERS: dict[str, tuple[str, Callable[..., Backend]]] = {
    "onnx": ("onnxruntime", lambda path, plugin, providers: OnnxRuntimeBackend(path, providers)),
    "engine": ("tensorrt", lambda path, plugin, providers: TensorRTBackend(path, plugin_path=plugin)),
    "torchscript": ("torch", lambda path, plugin, providers: TorchBackend.from_file(path)),
    "exported": ("torch", lambda path, plugin, providers: TorchBackend.from_file(path)),
}


def load(target, *, backend: str = "auto", plugin_path: str | Path | None = None,
         providers: Sequence[str] | None = None) -> Backend:
    """Load a model for inference.

    target: a model file (by suffix, bqq_deploy.model_files: .onnx in ONNX Runtime,
    .engine/.plan in TensorRT with the BQQ plugin library from plugin_path or the search
    path of bqq_deploy.trt, TorchScript or torch.export files in PyTorch), a bundle
    directory (its model.engine when present and TensorRT imports, else its model.onnx), or
    a torch.nn.Module. backend: "auto", or force "onnxruntime", "tensorrt" or "torch".
    providers: ONNX Runtime execution providers (default: CUDA when available, then CPU).
    """
    if backend not in BACKENDS:
        raise InputError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if not isinstance(target, (str, Path)):
        if backend not in ("auto", "torch"):
            raise InputError(f"a Python object can only run on the torch back end, not {backend}")
        return TorchBackend(target, label=type(target).__name__)
    path = Path(target)
    if not path.exists():
        raise FileNotFoundError(f"no such model file or bundle: {path}")
    if path.is_dir():
        return _load_bundle(Bundle(path), backend, plugin_path, providers)
    kind = kind_of(path)
    if kind is not None and backend in ("auto", LOADERS[kind][0]):
        return LOADERS[kind][1](path, plugin_path, providers)
    raise InputError(f"cannot run {path.name} with backend {backend!r} (known: "
                     + "; ".join(f"{', '.join(SUFFIXES[kind])} for {name}"
                                 for kind, (name, _) in LOADERS.items()) + ", or a bundle)")


def _load_bundle(bundle: Bundle, backend: str, plugin_path, providers) -> Backend:
    engine, onnx_file = bundle / Bundle.ENGINE, bundle / Bundle.PORTABLE_ONNX
    tensorrt_installed = importlib.util.find_spec("tensorrt") is not None
    if backend == "tensorrt" or (backend == "auto" and engine.is_file() and tensorrt_installed):
        if not engine.is_file():
            raise InputError(f"bundle {bundle.root} has no {Bundle.ENGINE}: build it on the "
                             f"target with `bqq-build {bundle.root}`")
        return TensorRTBackend(engine, plugin_path=plugin_path)
    if backend == "torch":
        raise InputError(f"a bundle holds ONNX/TensorRT files; load a PyTorch model file instead "
                         f"of {bundle.root}")
    if not onnx_file.is_file():
        raise InputError(f"bundle {bundle.root} has no {Bundle.PORTABLE_ONNX} (nor a usable "
                         f"{Bundle.ENGINE})")
    return OnnxRuntimeBackend(onnx_file, providers)
