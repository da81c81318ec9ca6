"""Model files users have, loaded safely: TorchScript archives, torch.export programs (.pt2),
ONNX files, and pickled nn.Modules only when the caller allows unpickling; and the
--input-shape syntax."""

from __future__ import annotations

import json
import re
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import onnx
import torch

from ..errors import InputError
from ..model_files import exported_input_specs, kind_of, known_suffixes
from ..specs import DTYPES, TensorSpec, sample_inputs, specs_from_ranges
from .forms import check

# Sources exported to ONNX by tracing a torch module (the TorchScript-based exporter): the
# batch dim (dim 0) is made dynamic, and every dim given a range.
TRACED_KINDS = ("torchscript", "pickle", "module")

_ONNX_DTYPES = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16",
                onnx.TensorProto.DOUBLE: "float64", onnx.TensorProto.INT64: "int64",
                onnx.TensorProto.INT32: "int32", onnx.TensorProto.INT16: "int16",
                onnx.TensorProto.INT8: "int8", onnx.TensorProto.UINT8: "uint8",
                onnx.TensorProto.BOOL: "bool"}


@dataclass
class SourceModel:
    """A loaded model: kind is "torchscript", "exported", "pickle", "module" (an nn.Module in
    memory, bqq_deploy.export_model) or "onnx". module is a callable torch module taking the
    inputs positionally (None for ONNX files); onnx_model is set for ONNX files."""

    path: Path
    kind: str
    inputs: list[TensorSpec]
    module: torch.nn.Module | None = None
    program: object | None = None  # torch.export.ExportedProgram for .pt2
    onnx_model: onnx.ModelProto | None = None  # external data left in files beside path
    output_names: list[str] = field(default_factory=list)
    allow_pickle: bool = False  # the user allowed unpickling this file
    dim_bounds: dict = field(default_factory=dict)  # symbolic dim -> (min, max or None)

    @property
    def is_torch(self) -> bool:
        return self.kind != "onnx"


# Dimensions of at most 10 digits: int32 range, checked below.
_SHAPE_RE = re.compile(r"^(?:(?P<name>[A-Za-z_][\w.\-/]*):)?(?P<dims>\d{1,10}(?:x\d{1,10})*)(?::(?P<dtype>\w+))?$")


def parse_input_shape(text: str) -> tuple[str | None, tuple[int, ...], str]:
    """Parse `2x16x128`, `name:2x16x128` or either with a dtype suffix `:int64`.
    Returns (name or None, shape, dtype). Raises InputError naming the problem."""
    match = _SHAPE_RE.match(text.strip())
    if not match:
        raise InputError(f"--input-shape {text!r}: expected DIMS like 2x16x128, optionally "
                         "NAME:DIMS and a dtype suffix :float32|float16|int64|int32|bool")
    dims = tuple(int(d) for d in match["dims"].split("x"))
    if any(not 1 <= d <= 2**31 - 1 for d in dims):
        raise InputError(f"--input-shape {text!r}: every dimension must be >= 1 (and below 2^31)")
    dtype = match["dtype"] or "float32"
    if dtype not in DTYPES:
        raise InputError(f"--input-shape {text!r}: unknown dtype {dtype!r} "
                         f"(known: {', '.join(DTYPES)})")
    return match["name"], dims, dtype


def specs_from_shapes(texts, known: list[TensorSpec] | None = None) -> list[TensorSpec]:
    """TensorSpecs from --input-shape values. Unnamed shapes take the known input names in
    order (or input, input_1, ...); named ones must name a known input when any are known."""
    parsed = [parse_input_shape(t) for t in texts]
    if any(name is None for name, _, _ in parsed) and any(name for name, _, _ in parsed):
        raise InputError("--input-shape: give names for all inputs or for none")
    known_names = [spec.name for spec in known or []]
    specs = []
    for index, (name, dims, dtype) in enumerate(parsed):
        if name is None:
            name = known_names[index] if index < len(known_names) else (
                "input" if index == 0 else f"input_{index}")
        elif known_names and name not in known_names:
            raise InputError(f"--input-shape: the model has no input {name!r} "
                             f"(inputs: {', '.join(known_names)})")
        specs.append(TensorSpec(name, dims, dtype))
    if known_names and len(specs) != len(known_names):
        raise InputError(f"--input-shape: the model has {len(known_names)} inputs "
                         f"({', '.join(known_names)}), got {len(specs)} shapes")
    return specs


def _sidecar_specs(path: Path) -> list[TensorSpec]:
    """Input specs from a JSON sidecar next to the model (MODEL.json):
    {"inputs": [{"name", "shape", "dtype"}, ...]} or {"input": {"name", "shape", "dtype"}}."""
    sidecar = path.with_suffix(".json")
    if not sidecar.is_file():
        return []
    try:
        meta = json.loads(sidecar.read_bytes())
        entries = meta.get("inputs") or [meta["input"]]
        specs = [TensorSpec(str(e.get("name", f"input_{i}")),
                            tuple(d if isinstance(d, int) else str(d) for d in e["shape"]),
                            str(e.get("dtype", "float32"))) for i, e in enumerate(entries)]
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
        # ValueError: bad UTF-8, bad JSON, integers too long to parse
        raise InputError(f"{sidecar}: not a model sidecar with input shapes ({exc})") from None
    except InputError as exc:
        raise InputError(f"{sidecar}: {exc}") from None
    return specs


def _sidecar_outputs(path: Path) -> list[str]:
    """Output names from the JSON sidecar ({"output": {"name"}} or {"outputs": [...]})."""
    sidecar = path.with_suffix(".json")
    try:
        meta = json.loads(sidecar.read_bytes()) if sidecar.is_file() else {}
        entries = meta.get("outputs") or ([meta["output"]] if "output" in meta else [])
        return [str(e["name"]) for e in entries]
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
        return []  # _sidecar_specs reports a damaged sidecar


def onnx_input_specs(model: onnx.ModelProto, path: Path | None = None) -> list[TensorSpec]:
    """The graph inputs of model (initializers listed as inputs left out); a dynamic dim is
    its dim_param, or "?" when unnamed. InputError for a type no back end feeds."""
    initializers = {init.name for init in model.graph.initializer}
    specs = []
    for value in model.graph.input:
        if value.name in initializers:
            continue
        tensor = value.type.tensor_type
        if not value.type.HasField("tensor_type") or tensor.elem_type not in _ONNX_DTYPES:
            known = tensor.elem_type in onnx.TensorProto.DataType.values()
            kind = ((onnx.TensorProto.DataType.Name(tensor.elem_type) if known
                     else f"element type {tensor.elem_type}")
                    if value.type.HasField("tensor_type") else value.type.WhichOneof("value"))
            raise InputError(f"{path or 'the model'}: input {value.name!r} has an unsupported "
                             f"type ({kind})")
        dims = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0
                     else (d.dim_param or "?") for d in tensor.shape.dim)
        specs.append(TensorSpec(value.name, dims, _ONNX_DTYPES[tensor.elem_type]))
    return specs


def load_model(path, *, input_shapes=(), shape_ranges=(), allow_pickle: bool = False) -> SourceModel:
    """Load MODEL by its extension. Input specs come from the file (ONNX inputs, a JSON
    sidecar next to a torch file) and are overridden by input_shapes (--input-shape); a torch
    file that declares none may take them from shape_ranges (--shapes: the opt shapes).
    Raises InputError with one line naming the problem."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if not path.is_file():
        raise InputError(f"{path}: not a file")
    kind = kind_of(path)
    if kind == "onnx":
        return _load_onnx(path, input_shapes)
    if kind == "exported":
        source = _load_exported(path)
    elif kind == "torchscript":
        source = _load_torchscript(path, allow_pickle)
    else:
        raise InputError(f"{path}: unsupported model file extension {path.suffix or '(none)'!r} "
                         f"(supported: {known_suffixes('onnx', 'exported', 'torchscript')})")
    if input_shapes:
        source.inputs = specs_from_shapes(input_shapes, source.inputs or None)
    else:
        source.inputs = source.inputs or _sidecar_specs(path) or specs_from_ranges(shape_ranges)
    source.output_names = _sidecar_outputs(path)
    if not source.inputs:
        raise InputError(f"{path}: input shapes unknown; pass --input-shape (e.g. 1x3x224x224) "
                         f"or --shapes, or put a {path.with_suffix('.json').name} sidecar next "
                         "to the model")
    check_runs(source)
    return source


def _load_onnx(path: Path, input_shapes) -> SourceModel:
    try:
        # Tensors in external data files stay there: the export reads them one at a time.
        model = onnx.load(str(path), load_external_data=False)
        check(model, path)
    except Exception as exc:  # onnx raises DecodeError, ValidationError, ...
        raise InputError(f"{path}: not a valid ONNX model ({_first_line(exc)})") from None
    if any(node.domain == "bqq" for node in model.graph.node):
        raise InputError(f"{path}: holds BQQMatMul nodes already (a bqq-export output); export "
                         "the original fp32 model instead")
    specs = onnx_input_specs(model, path)
    if input_shapes:
        given = specs_from_shapes(input_shapes, specs)
        for spec, want in zip(given, specs):
            if len(spec.shape) != len(want.shape) or any(
                    isinstance(w, int) and w > 0 and w != g for w, g in zip(want.shape, spec.shape)):
                raise InputError(f"--input-shape {'x'.join(map(str, spec.shape))} does not fit "
                                 f"input {want.name!r} of shape {list(want.shape)}")
        specs = [replace(g, dtype=w.dtype) for g, w in zip(given, specs)]
    return SourceModel(path, "onnx", specs, onnx_model=model,
                       output_names=[o.name for o in model.graph.output])


def _load_exported(path: Path) -> SourceModel:
    try:
        program = torch.export.load(str(path))
    except Exception as exc:
        raise InputError(f"{path}: not a torch.export program ({_first_line(exc)})") from None
    try:  # a program that loads can still fail to become a module (or a spec)
        specs = [spec for spec in exported_input_specs(program) if spec.shape]
        module = program.module()
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"{path}: not a usable torch.export program ({_first_line(exc)})") from None
    return SourceModel(path, "exported", specs, module=module, program=program,
                       dim_bounds=_dim_bounds(program))


def _dim_bounds(program) -> dict[str, tuple[int, int | None]]:
    """{symbolic dim: (min, max or None)} from a torch.export program's Dim ranges."""
    bounds = {}
    for symbol, value_range in getattr(program, "range_constraints", {}).items():
        lower, upper = (_finite_int(value_range.lower), _finite_int(value_range.upper))
        bounds[str(symbol)] = (max(1, lower or 1), upper)
    return bounds


def _finite_int(value) -> int | None:
    """A sympy bound as an int, None when infinite (torch's int_oo) or not a number."""
    try:
        return int(value) if bool(getattr(value, "is_finite", True)) else None
    except Exception:  # sympy raises several types on infinities
        return None


def _load_torchscript(path: Path, allow_pickle: bool) -> SourceModel:
    try:
        module = torch.jit.load(str(path), map_location="cpu")
        return SourceModel(path, "torchscript", [], module=module.eval())
    except Exception as exc:
        script_error = _first_line(exc)
    if not zipfile.is_zipfile(path) and not _looks_pickled(path):
        raise InputError(f"{path}: not a TorchScript archive or a torch file ({script_error})")
    if not allow_pickle:
        raise InputError(f"{path}: not a TorchScript archive (a pickled torch file?); pass "
                         "--allow-pickle to unpickle it, which runs arbitrary code from the file")
    try:
        module = torch.load(str(path), map_location="cpu", weights_only=False)
    except Exception as exc:
        raise InputError(f"{path}: cannot unpickle ({_first_line(exc)})") from None
    if not isinstance(module, torch.nn.Module):
        raise InputError(f"{path}: holds a {type(module).__name__}, not an nn.Module "
                         "(a state_dict needs its model class; save the module or TorchScript)")
    return SourceModel(path, "pickle", [], module=module.eval(), allow_pickle=True)


def _looks_pickled(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(1) == b"\x80"  # pickle protocol >= 2 opcode


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def torch_forward(module: torch.nn.Module, specs: list[TensorSpec], feeds: dict) -> list[np.ndarray]:
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
        raise InputError(f"{source.path}: model does not run on input shape {shapes} "
                         f"({_first_line(exc)})") from None
    if len(source.output_names) != len(outputs):
        source.output_names = (["output"] if len(outputs) == 1
                               else [f"output_{i}" for i in range(len(outputs))])
