"""torch model -> fp32 ONNX with a dynamic batch dimension and folded constants."""

from __future__ import annotations

import io
import logging
import warnings

import onnx
import torch
from onnx import version_converter

from ..errors import InputError
from ..specs import sample_inputs
from .loaders import SourceModel

log = logging.getLogger(__name__)

# BitwiseAnd, which the portable BQQMatMul function needs, exists from opset 18 on.
OPSET = 18


def torch_to_onnx(source: SourceModel, opset: int = OPSET) -> onnx.ModelProto:
    """Export source's torch model to ONNX (opset >= 18, batch dimension dynamic).

    TorchScript and eager modules go through the TorchScript-based exporter with constant
    folding; torch.export programs (.pt2) through the torch.export-based one, which keeps
    the program's own dynamic dimensions."""
    feeds = sample_inputs(source.inputs)
    args = tuple(torch.from_numpy(feeds[s.name]) for s in source.inputs)
    input_names = [s.name for s in source.inputs]
    output_names = source.output_names or ["output"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            if source.program is not None:
                program = torch.onnx.export(source.program, args, None, dynamo=True,
                                            opset_version=opset, input_names=input_names,
                                            output_names=output_names, optimize=True,
                                            verbose=False)
                model = program.model_proto
            else:
                buffer = io.BytesIO()
                dynamic = {name: {0: "batch"} for name in input_names + output_names}
                torch.onnx.export(source.module, args, buffer, dynamo=False, opset_version=opset,
                                  input_names=input_names, output_names=output_names,
                                  dynamic_axes=dynamic, do_constant_folding=True)
                model = onnx.load_from_string(buffer.getvalue())
        except Exception as exc:
            raise InputError(f"{source.path}: torch.onnx.export failed "
                             f"({str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__})") from None
    for warning in caught:
        log.debug("torch.onnx: %s", str(warning.message).splitlines()[0])
    return model


def ensure_opset(model: onnx.ModelProto, opset: int = OPSET) -> onnx.ModelProto:
    """The model at default-domain opset >= opset (upgraded with the ONNX version converter)."""
    current = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if current >= opset:
        return model
    try:
        return version_converter.convert_version(model, opset)
    except Exception as exc:
        raise InputError(f"cannot convert the ONNX model from opset {current} to {opset} "
                         f"({str(exc).strip().splitlines()[0]})") from None
