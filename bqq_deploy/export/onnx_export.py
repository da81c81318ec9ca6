"""torch model -> fp32 ONNX with a dynamic batch dimension and folded constants."""

from __future__ import annotations

import io
import logging

import onnx
import torch
from onnx import version_converter

from ..errors import InputError
from ..specs import sample_inputs
from .loaders import SourceModel
from ..tensors import TensorFiles

log = logging.getLogger(__name__)

# BitwiseAnd, which the portable BQQMatMul function needs, exists from opset 18 on.
OPSET = 18


# The TorchScript-based exporter holds several copies of the weights while it exports (5.6x
# the parameters' bytes on top of the model, measured on a 151M-parameter Qwen2; the
# torch.export-based one 0.9x): Python modules past this size go to the latter directly.
LARGE_MODULE_BYTES = 2**29


def torch_to_onnx(source: SourceModel, data: TensorFiles, opset: int = OPSET) -> onnx.ModelProto:
    """Export source's torch model to ONNX (opset >= 18), its large tensors in data
    (tensors.TensorFiles).

    TorchScript and eager modules go through the TorchScript-based exporter with constant
    folding, traced at each input's opt shape (concrete_shape), with the batch dim and every
    dim whose profile range is not a single value dynamic; torch.export programs (.pt2), and
    Python modules of LARGE_MODULE_BYTES or more, go through the torch.export-based one,
    which keeps a program's own dynamic dims and writes the weights straight to data."""
    feeds = sample_inputs(source.inputs)
    args = tuple(torch.from_numpy(feeds[s.name]) for s in source.inputs)
    input_names = [s.name for s in source.inputs]
    output_names = source.output_names or ["output"]
    if source.kind in ("module", "pickle") and _parameter_bytes(source.module) >= LARGE_MODULE_BYTES:
        return _dynamo_export(source, args, input_names, output_names, opset, data)
    try:
        if source.program is not None:
            program = torch.onnx.export(source.program, args, None, dynamo=True,
                                        opset_version=opset, input_names=input_names,
                                        output_names=output_names, optimize=True,
                                        verbose=False)
            return _saved(program, data)
        buffer = io.BytesIO()
        dynamic = {spec.name: _dynamic_axes(spec) for spec in source.inputs}
        dynamic.update({name: {0: "batch"} for name in output_names})
        torch.onnx.export(source.module, args, buffer, dynamo=False, opset_version=opset,
                          input_names=input_names, output_names=output_names,
                          dynamic_axes=dynamic, do_constant_folding=True)
    except Exception as exc:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if source.kind in ("module", "pickle"):  # a Python module: torch.export may trace it
            log.warning("%s: the TorchScript-based exporter failed (%s); used the "
                        "torch.export-based one", source.path, text[:200])
            return _dynamo_export(source, args, input_names, output_names, opset, data, text)
        raise InputError(f"{source.path}: torch.onnx.export failed ({text})"
                         + (TORCHSCRIPT_REMEDY if source.kind == "torchscript" else "")) from None
    return onnx.load_from_string(buffer.getvalue())


def _parameter_bytes(module: torch.nn.Module) -> int:
    tensors = {id(t): t for t in [*module.parameters(), *module.buffers()]}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def _saved(program, data: TensorFiles) -> onnx.ModelProto:
    """An ONNXProgram written into data (weights as external data, straight from the torch
    tensors) and read back without them."""
    path = data.save_path("fp32")
    program.save(str(path), external_data=True)
    return onnx.load(str(path), load_external_data=False)


def _dynamo_export(source: SourceModel, args, input_names, output_names, opset: int,
                   data: TensorFiles, first_error: str | None = None) -> onnx.ModelProto:
    """source's module through torch.export and the torch.export-based ONNX exporter, with
    the same dims dynamic (torch.export.Dim per symbolic dim, shared by name)."""
    dims: dict[str, object] = {}

    def dim(name: str, lo: int, hi: int):
        return dims.setdefault(name, torch.export.Dim(_identifier(name), min=lo, max=hi))

    shapes = tuple({i: dim(axis, spec.min[i], spec.max[i]) for i, axis in _dynamic_axes(spec).items()
                    if spec.min[i] != spec.max[i]} or None for spec in source.inputs)
    try:
        # forward(*inputs): the dims of the one variadic argument, one entry per input
        program = torch.onnx.export(source.module, args, None, dynamo=True, opset_version=opset,
                                    input_names=input_names, output_names=output_names,
                                    dynamic_shapes=(shapes,), optimize=True, verbose=False)
    except Exception as exc:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        tried = (f"both exporters (TorchScript-based: {first_error[:200]}; torch.export-based: "
                 f"{text[:200]})" if first_error else f"the torch.export-based exporter ({text[:200]})")
        raise InputError(f"{source.path}: torch.onnx.export failed with {tried}") from None
    return _saved(program, data)


def _identifier(name: str) -> str:
    """A Python identifier for a torch.export.Dim name."""
    text = "".join(c if c.isalnum() or c == "_" else "_" for c in name)
    return text if text and not text[0].isdigit() else f"d_{text}"


# A TorchScript file keeps no tensor shapes, which torch's ONNX exporter needs for some ops (a
# traced nn.TransformerEncoder fails in MultiheadAttention); the Python model has them.
TORCHSCRIPT_REMEDY = ("; the TorchScript file lacks the shapes the exporter needs: export the "
                      "Python model instead, with bqq_deploy.export_model(model, args, out) or as "
                      "a torch.export program (torch.export.save(torch.export.export(model, "
                      "args), 'model.pt2'))")


def _dynamic_axes(spec) -> dict[int, str]:
    """{dim: name} of the dims of spec that vary: the batch and every ranged dim."""
    axes = {}
    for i, dim in enumerate(spec.shape):
        ranged = spec.min is not None and spec.min[i] != spec.max[i]
        if i == 0 or ranged:
            axes[i] = dim if isinstance(dim, str) and dim != "?" else (
                "batch" if i == 0 else f"{spec.name}_dim{i}")
    return axes


def ensure_opset(model: onnx.ModelProto, opset: int = OPSET) -> onnx.ModelProto:
    """The model at default-domain opset >= opset (upgraded with the ONNX version converter)."""
    current = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if current >= opset:
        return model
    try:
        converted = version_converter.convert_version(model, opset)
    except Exception as exc:
        raise InputError(f"cannot convert the ONNX model from opset {current} to {opset} "
                         f"({str(exc).strip().splitlines()[0]})") from None
    # The converter drops node metadata, where torch's exporter records module paths.
    metadata = {n.name: n.metadata_props for n in model.graph.node if n.name and n.metadata_props}
    for node in converted.graph.node:
        if node.name in metadata and not node.metadata_props:
            node.metadata_props.extend(metadata[node.name])
    return converted
