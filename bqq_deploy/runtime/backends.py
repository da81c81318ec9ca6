"""Back ends that run an exported model: ONNX Runtime, PyTorch and (in tensorrt_backend.py)
TensorRT, behind one small interface, and `load` which picks one from what it is given."""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "onnxruntime", "tensorrt", "torch")
TORCHSCRIPT_SUFFIXES = (".pt", ".ts", ".pth", ".jit")
ENGINE_SUFFIXES = (".engine", ".plan")
# Bundle members, in the order load() prefers them (docs/RUNTIME.md).
BUNDLE_ENGINE = "model.engine"
BUNDLE_ONNX = "model.onnx"

_ORT_DTYPES = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int16)": np.int16,
    "tensor(int8)": np.int8, "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_,
}


@dataclass(frozen=True)
class TensorSpec:
    """One model input: name, shape (None or a symbolic name for a dynamic dim), numpy dtype."""

    name: str
    shape: tuple[int | str | None, ...]
    dtype: Any

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": np.dtype(self.dtype).name}


class Backend:
    """A loaded model. Subclasses implement prepare (host arrays -> whatever execute needs,
    e.g. device tensors), execute (the timed part) and fetch (results -> host arrays)."""

    name: str = "backend"
    device: str = "cpu"  # "cuda" when execute runs on a GPU (benchmark then uses CUDA events)
    _inputs: list[TensorSpec]  # set by each subclass's constructor
    _outputs: list[str]

    @property
    def input_specs(self) -> list[TensorSpec]:
        return list(self._inputs)

    @property
    def output_names(self) -> list[str]:
        return list(self._outputs)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run once on host arrays; returns host arrays keyed by output name."""
        return self.fetch(self.execute(self.prepare(feeds)))

    def prepare(self, feeds: dict[str, np.ndarray]) -> Any:
        return self.bind_feeds(feeds)

    def execute(self, prepared: Any) -> Any:
        raise NotImplementedError

    def fetch(self, raw: Any) -> dict[str, np.ndarray]:
        return raw

    def bind_feeds(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Key feeds by this model's input names. Feeds whose name matches an input go to it;
        the others fill the remaining inputs in order (so feeds made for an ONNX file run
        its PyTorch original, whose argument names differ). The counts must agree."""
        names = [spec.name for spec in self.input_specs]
        if len(feeds) != len(names):
            raise ValueError(f"{self.name}: model inputs are {names}, got feeds {list(feeds)}")
        matched = {name: feeds[name] for name in names if name in feeds}
        rest = iter(value for key, value in feeds.items() if key not in matched)
        return {name: np.ascontiguousarray(matched[name] if name in matched else next(rest))
                for name in names}


class OnnxRuntimeBackend(Backend):
    """An ONNX file in ONNX Runtime; model-local functions (the portable BQQMatMul) run as-is."""

    def __init__(self, path: Path, providers: Sequence[str] | None = None):
        import onnxruntime as ort

        if providers is None:
            available = ort.get_available_providers()
            providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        options = ort.SessionOptions()
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), sess_options=options, providers=list(providers))
        self.path = Path(path)
        used = self.session.get_providers()
        self.device = "cuda" if used and used[0] == "CUDAExecutionProvider" else "cpu"
        self.name = f"onnxruntime[{used[0] if used else '?'}]:{self.path.name}"
        self._inputs = [TensorSpec(i.name, tuple(i.shape), _ORT_DTYPES.get(i.type, np.float32))
                        for i in self.session.get_inputs()]
        self._outputs = [o.name for o in self.session.get_outputs()]

    def execute(self, prepared: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # ORT on CUDA copies host arrays in and out inside run(): its timings include them.
        return dict(zip(self._outputs, self.session.run(self._outputs, prepared)))


class TorchBackend(Backend):
    """A torch.nn.Module, a TorchScript file or a torch.export .pt2 file, on CUDA if present."""

    def __init__(self, module, *, label: str = "module", device: str | None = None,
                 input_specs: list[TensorSpec] | None = None):
        import torch

        self.torch = torch
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.module = module.to(self.device) if hasattr(module, "to") else module
        try:
            self.module.eval()
        except NotImplementedError:  # torch.export modules refuse eval(); they are traced already
            pass
        self.name = f"torch[{self.device}]:{label}"
        self._inputs = input_specs or _module_input_specs(self.module)
        # ["output"] for a single tensor; output_0.. or a dict's keys once a run showed more.
        self._outputs = ["output"]

    @classmethod
    def from_file(cls, path: Path) -> "TorchBackend":
        import torch

        if path.suffix == ".pt2":
            program = torch.export.load(str(path))
            return cls(program.module(), label=path.name, input_specs=_exported_input_specs(program))
        return cls(torch.jit.load(str(path), map_location="cpu"), label=path.name)

    def prepare(self, feeds: dict[str, np.ndarray]) -> list:
        bound = self.bind_feeds(feeds)
        return [self.torch.from_numpy(array).to(self.device) for array in bound.values()]

    def execute(self, prepared: list):
        with self.torch.inference_mode():
            return self.module(*prepared)

    def fetch(self, raw) -> dict[str, np.ndarray]:
        if isinstance(raw, dict):
            named = dict(raw)
        elif isinstance(raw, (tuple, list)):
            named = {f"output_{i}": value for i, value in enumerate(raw)}
        else:
            named = {"output": raw}
        self._outputs = list(named)
        return {key: value.detach().cpu().numpy() for key, value in named.items()}


def _module_input_specs(module) -> list[TensorSpec]:
    """Input names from forward's signature (TorchScript: its schema); shapes are unknown.
    Arguments with a default value are left out: the exported graph fixed them."""
    schema = getattr(getattr(module, "forward", None), "schema", None)
    if schema is not None:
        names = [arg.name for arg in schema.arguments[1:] if not arg.has_default_value()]
    else:
        params = inspect.signature(module.forward).parameters.values()
        names = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
                 and p.default is inspect.Parameter.empty]
    return [TensorSpec(name, (), np.float32) for name in names]


def _exported_input_specs(program) -> list[TensorSpec]:
    import torch

    placeholders = {node.name: node for node in program.graph.nodes if node.op == "placeholder"}
    specs = []
    for name in program.graph_signature.user_inputs:
        value = placeholders[name].meta.get("val") if name in placeholders else None
        if value is None:
            specs.append(TensorSpec(name, (), np.float32))
            continue
        shape = tuple(int(d) if isinstance(d, int) else str(d) for d in value.shape)
        dtype = torch.empty((), dtype=value.dtype).numpy().dtype
        specs.append(TensorSpec(name, shape, dtype))
    return specs


def load(target, *, backend: str = "auto", plugin_path: str | Path | None = None,
         providers: Sequence[str] | None = None) -> Backend:
    """Load a model for inference.

    target: a .onnx file (ONNX Runtime), a .engine/.plan file (TensorRT, with the BQQ plugin
    library from plugin_path or the search path of bqq_deploy.engine), a bundle directory
    (its model.engine when present and TensorRT imports, else its model.onnx), a
    torch.nn.Module, or a TorchScript (.pt, .ts) / torch.export (.pt2) file.
    backend: "auto", or force "onnxruntime", "tensorrt" or "torch".
    providers: ONNX Runtime execution providers (default: CUDA when available, then CPU).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if not isinstance(target, (str, Path)):
        if backend not in ("auto", "torch"):
            raise ValueError(f"a Python object can only run on the torch back end, not {backend}")
        return TorchBackend(target, label=type(target).__name__)
    path = Path(target)
    if not path.exists():
        raise FileNotFoundError(f"no such model file or bundle: {path}")
    if path.is_dir():
        return _load_bundle(path, backend, plugin_path, providers)
    suffix = path.suffix.lower()
    if suffix in ENGINE_SUFFIXES and backend in ("auto", "tensorrt"):
        from .tensorrt_backend import TensorRTBackend

        return TensorRTBackend(path, plugin_path=plugin_path)
    if suffix == ".onnx" and backend in ("auto", "onnxruntime"):
        return OnnxRuntimeBackend(path, providers)
    if (suffix in TORCHSCRIPT_SUFFIXES or suffix == ".pt2") and backend in ("auto", "torch"):
        return TorchBackend.from_file(path)
    raise ValueError(f"cannot run {path.name} with backend {backend!r} (known: .onnx for "
                     "onnxruntime, .engine/.plan for tensorrt, .pt/.ts/.pt2 for torch, or a bundle)")


def _load_bundle(path: Path, backend: str, plugin_path, providers) -> Backend:
    engine, onnx_file = path / BUNDLE_ENGINE, path / BUNDLE_ONNX
    if backend == "tensorrt" or (backend == "auto" and engine.is_file() and _tensorrt_importable()):
        if not engine.is_file():
            raise FileNotFoundError(f"bundle {path} has no {BUNDLE_ENGINE}: build it on the "
                                    f"target with `bqq-build {path}`")
        from .tensorrt_backend import TensorRTBackend

        return TensorRTBackend(engine, plugin_path=plugin_path)
    if backend == "torch":
        raise ValueError(f"a bundle holds ONNX/TensorRT files; load a PyTorch model file instead of {path}")
    if not onnx_file.is_file():
        raise FileNotFoundError(f"bundle {path} has no {BUNDLE_ONNX} (nor a usable {BUNDLE_ENGINE})")
    return OnnxRuntimeBackend(onnx_file, providers)


def _tensorrt_importable() -> bool:
    import importlib.util

    return importlib.util.find_spec("tensorrt") is not None
