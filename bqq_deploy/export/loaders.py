"""Model files users have, loaded safely: TorchScript archives, torch.export programs (.pt2),
ONNX files, and pickled nn.Modules only when the caller allows unpickling. Also the
--input-shape syntax and the sample inputs derived from input specs."""

from __future__ import annotations

import json
import re
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import onnx
import torch

from ..cli.common import UsageError


TORCHSCRIPT_SUFFIXES = (".pt", ".pth", ".ts", ".jit", ".torchscript")
EXPORTED_SUFFIXES = (".pt2",)
ONNX_SUFFIXES = (".onnx",)
_DTYPES = {"float32": np.float32, "float16": np.float16, "int64": np.int64, "int32": np.int32,
           "bool": np.bool_}
_ONNX_DTYPES = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16",
                onnx.TensorProto.INT64: "int64", onnx.TensorProto.INT32: "int32",
                onnx.TensorProto.BOOL: "bool"}
# Size given to a symbolic batch dimension when sample inputs are made.
SAMPLE_BATCH = 2


@dataclass(frozen=True)
class InputSpec:
    """One model input. shape[0] is the batch dimension (dynamic in exported files); a str
    entry is a symbolic dimension."""

    name: str
    shape: tuple
    dtype: str = "float32"

    def concrete_shape(self) -> tuple[int, ...]:
        """The shape of a sample input: symbolic dims become SAMPLE_BATCH (dim 0) or 1."""
        return tuple(d if isinstance(d, int) and d > 0 else (SAMPLE_BATCH if i == 0 else 1)
                     for i, d in enumerate(self.shape))

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


@dataclass
class SourceModel:
    """A loaded model: kind is "torchscript", "exported", "pickle" or "onnx". module is a
    callable torch module (None for ONNX files); onnx_model is set for ONNX files."""

    path: Path
    kind: str
    inputs: list[InputSpec]
    module: torch.nn.Module | None = None
    program: object | None = None  # torch.export.ExportedProgram for .pt2
    onnx_model: onnx.ModelProto | None = None
    output_names: list[str] = field(default_factory=list)

    @property
    def is_torch(self) -> bool:
        return self.kind != "onnx"

    def fresh_module(self, allow_pickle: bool = False) -> torch.nn.Module:
        """A new copy of the torch module from the file (so weights can be replaced)."""
        return load_model(self.path, input_shapes=(), allow_pickle=allow_pickle,
                          _inputs=self.inputs).module


_SHAPE_RE = re.compile(r"^(?:(?P<name>[A-Za-z_][\w.\-/]*):)?(?P<dims>\d+(?:x\d+)*)(?::(?P<dtype>\w+))?$")


def parse_input_shape(text: str) -> tuple[str | None, tuple[int, ...], str]:
    """Parse `2x16x128`, `name:2x16x128` or either with a dtype suffix `:int64`.
    Returns (name or None, shape, dtype). Raises UsageError naming the problem."""
    match = _SHAPE_RE.match(text.strip())
    if not match:
        raise UsageError(f"--input-shape {text!r}: expected DIMS like 2x16x128, optionally "
                         "NAME:DIMS and a dtype suffix :float32|float16|int64|int32|bool")
    dims = tuple(int(d) for d in match["dims"].split("x"))
    if any(d <= 0 for d in dims):
        raise UsageError(f"--input-shape {text!r}: every dimension must be >= 1")
    dtype = match["dtype"] or "float32"
    if dtype not in _DTYPES:
        raise UsageError(f"--input-shape {text!r}: unknown dtype {dtype!r} "
                         f"(known: {', '.join(_DTYPES)})")
    return match["name"], dims, dtype


def specs_from_shapes(texts, known: list[InputSpec] | None = None) -> list[InputSpec]:
    """InputSpecs from --input-shape values. Unnamed shapes take the known input names in
    order (or input, input_1, ...); named ones must name a known input when any are known."""
    parsed = [parse_input_shape(t) for t in texts]
    if any(name is None for name, _, _ in parsed) and any(name for name, _, _ in parsed):
        raise UsageError("--input-shape: give names for all inputs or for none")
    known_names = [spec.name for spec in known or []]
    specs = []
    for index, (name, dims, dtype) in enumerate(parsed):
        if name is None:
            name = known_names[index] if index < len(known_names) else (
                "input" if index == 0 else f"input_{index}")
        elif known_names and name not in known_names:
            raise UsageError(f"--input-shape: the model has no input {name!r} "
                             f"(inputs: {', '.join(known_names)})")
        specs.append(InputSpec(name, dims, dtype))
    if known_names and len(specs) != len(known_names):
        raise UsageError(f"--input-shape: the model has {len(known_names)} inputs "
                         f"({', '.join(known_names)}), got {len(specs)} shapes")
    return specs


def _sidecar_specs(path: Path) -> list[InputSpec]:
    """Input specs from a JSON sidecar next to the model (MODEL.json):
    {"inputs": [{"name", "shape", "dtype"}, ...]} or {"input": {"name", "shape", "dtype"}}."""
    sidecar = path.with_suffix(".json")
    if not sidecar.is_file():
        return []
    try:
        meta = json.loads(sidecar.read_text())
        entries = meta.get("inputs") or [meta["input"]]
        specs = [InputSpec(str(e.get("name", f"input_{i}")),
                           tuple(d if isinstance(d, int) else str(d) for d in e["shape"]),
                           str(e.get("dtype", "float32"))) for i, e in enumerate(entries)]
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
        raise UsageError(f"{sidecar}: not a model sidecar with input shapes ({exc})") from None
    for spec in specs:
        if spec.dtype not in _DTYPES:
            raise UsageError(f"{sidecar}: input {spec.name!r} has unknown dtype {spec.dtype!r}")
    return specs


def _sidecar_outputs(path: Path) -> list[str]:
    """Output names from the JSON sidecar ({"output": {"name"}} or {"outputs": [...]})."""
    sidecar = path.with_suffix(".json")
    try:
        meta = json.loads(sidecar.read_text()) if sidecar.is_file() else {}
        entries = meta.get("outputs") or ([meta["output"]] if "output" in meta else [])
        return [str(e["name"]) for e in entries]
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
        return []


def _onnx_specs(model: onnx.ModelProto, path: Path) -> list[InputSpec]:
    initializers = {init.name for init in model.graph.initializer}
    specs = []
    for value in model.graph.input:
        if value.name in initializers:
            continue
        tensor = value.type.tensor_type
        if tensor.elem_type not in _ONNX_DTYPES:
            raise UsageError(f"{path}: input {value.name!r} has an unsupported type "
                             f"({onnx.TensorProto.DataType.Name(tensor.elem_type)})")
        dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
                     for d in tensor.shape.dim)
        specs.append(InputSpec(value.name, dims, _ONNX_DTYPES[tensor.elem_type]))
    return specs


def load_model(path, *, input_shapes=(), allow_pickle: bool = False,
               _inputs: list[InputSpec] | None = None) -> SourceModel:
    """Load MODEL by its extension. Input specs come from the file (ONNX inputs, a JSON
    sidecar next to a torch file) and are overridden by input_shapes (--input-shape).
    Raises UsageError with one line naming the problem."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"{path}: no such file")
    if not path.is_file():
        raise UsageError(f"{path}: not a file")
    suffix = path.suffix.lower()
    if suffix in ONNX_SUFFIXES:
        return _load_onnx(path, input_shapes)
    if suffix in EXPORTED_SUFFIXES:
        source = _load_exported(path)
    elif suffix in TORCHSCRIPT_SUFFIXES:
        source = _load_torchscript(path, allow_pickle)
    else:
        raise UsageError(f"{path}: unsupported model file extension {path.suffix or '(none)'!r} "
                         f"(supported: {', '.join(ONNX_SUFFIXES + EXPORTED_SUFFIXES + TORCHSCRIPT_SUFFIXES)})")
    if _inputs is not None:
        source.inputs = _inputs
    elif input_shapes:
        source.inputs = specs_from_shapes(input_shapes, source.inputs or None)
    else:
        source.inputs = source.inputs or _sidecar_specs(path)
    source.output_names = _sidecar_outputs(path)
    if not source.inputs:
        raise UsageError(f"{path}: input shapes unknown; pass --input-shape (e.g. 1x3x224x224) "
                         f"or put a {path.with_suffix('.json').name} sidecar next to the model")
    if _inputs is None:
        check_runs(source)
    return source


def _load_onnx(path: Path, input_shapes) -> SourceModel:
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as exc:  # onnx raises DecodeError, ValidationError, ...
        raise UsageError(f"{path}: not a valid ONNX model ({_first_line(exc)})") from None
    specs = _onnx_specs(model, path)
    if input_shapes:
        given = specs_from_shapes(input_shapes, specs)
        for spec, want in zip(given, specs):
            if len(spec.shape) != len(want.shape) or any(
                    isinstance(w, int) and w > 0 and w != g for w, g in zip(want.shape, spec.shape)):
                raise UsageError(f"--input-shape {'x'.join(map(str, spec.shape))} does not fit "
                                 f"input {want.name!r} of shape {list(want.shape)}")
        specs = [replace(g, dtype=w.dtype) for g, w in zip(given, specs)]
    return SourceModel(path, "onnx", specs, onnx_model=model,
                       output_names=[o.name for o in model.graph.output])


def _load_exported(path: Path) -> SourceModel:
    try:
        program = torch.export.load(str(path))
    except Exception as exc:
        raise UsageError(f"{path}: not a torch.export program ({_first_line(exc)})") from None
    specs = []
    placeholders = [s for s in program.graph_signature.input_specs if s.kind.name == "USER_INPUT"]
    nodes = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    for spec in placeholders:
        meta = nodes[spec.arg.name].meta.get("val")
        if meta is None or not hasattr(meta, "shape"):
            continue
        dims = tuple(int(d) if isinstance(d, int) or str(d).isdigit() else str(d) for d in meta.shape)
        specs.append(InputSpec(spec.arg.name, dims, str(meta.dtype).removeprefix("torch.")))
    return SourceModel(path, "exported", specs, module=program.module(), program=program)


def _load_torchscript(path: Path, allow_pickle: bool) -> SourceModel:
    try:
        module = torch.jit.load(str(path), map_location="cpu")
        return SourceModel(path, "torchscript", [], module=module.eval())
    except Exception as exc:
        script_error = _first_line(exc)
    if not zipfile.is_zipfile(path) and not _looks_pickled(path):
        raise UsageError(f"{path}: not a TorchScript archive or a torch file ({script_error})")
    if not allow_pickle:
        raise UsageError(f"{path}: not a TorchScript archive (a pickled torch file?); pass "
                         "--allow-pickle to unpickle it, which runs arbitrary code from the file")
    try:
        module = torch.load(str(path), map_location="cpu", weights_only=False)
    except Exception as exc:
        raise UsageError(f"{path}: cannot unpickle ({_first_line(exc)})") from None
    if not isinstance(module, torch.nn.Module):
        raise UsageError(f"{path}: holds a {type(module).__name__}, not an nn.Module "
                         "(a state_dict needs its model class; save the module or TorchScript)")
    return SourceModel(path, "pickle", [], module=module.eval())


def _looks_pickled(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(1) == b"\x80"  # pickle protocol >= 2 opcode


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def sample_inputs(specs: list[InputSpec], seed: int = 0) -> dict:
    """Random feeds for specs (normal floats, small non-negative integers)."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in specs:
        shape = spec.concrete_shape()
        dtype = _DTYPES[spec.dtype]
        if np.issubdtype(dtype, np.floating):
            feeds[spec.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype == np.bool_:
            feeds[spec.name] = np.ones(shape, dtype)
        else:
            feeds[spec.name] = rng.integers(0, 2, shape).astype(dtype)
    return feeds


def torch_forward(module: torch.nn.Module, specs: list[InputSpec], feeds: dict) -> list[np.ndarray]:
    """Run module on numpy feeds (in spec order); outputs flattened to a list of arrays."""
    with torch.no_grad():
        out = module(*(torch.from_numpy(np.asarray(feeds[s.name])) for s in specs))
    flat = out if isinstance(out, (tuple, list)) else [out]
    return [t.detach().float().numpy() for t in flat]


def check_runs(source: SourceModel) -> None:
    """Run the torch model once on a sample batch so a wrong input shape fails here, with
    one line, rather than deep inside the exporter."""
    feeds = sample_inputs(source.inputs)
    try:
        outputs = torch_forward(source.module, source.inputs, feeds)
    except Exception as exc:
        shapes = ", ".join(f"{s.name}={'x'.join(map(str, s.concrete_shape()))}"
                           for s in source.inputs)
        raise UsageError(f"{source.path}: model does not run on input shape {shapes} "
                         f"({_first_line(exc)})") from None
    if len(source.output_names) != len(outputs):
        source.output_names = (["output"] if len(outputs) == 1
                               else [f"output_{i}" for i in range(len(outputs))])
