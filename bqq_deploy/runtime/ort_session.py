"""ONNX Runtime sessions for bundle files, with the portable file's weights decoded here.

Plain ONNX Runtime runs model.onnx as it is: at load it folds each bqq::BQQDecode node into
its weight, through a chain of standard ops whose intermediates (bits as floats, block
products) cost seconds and, transiently, several times the model's memory. `ort_session`
instead decodes the packed tensors with torch (BQQWeight.dequantize: the same W_hat) and
hands ONNX Runtime the decoded weights as external initializers, which it uses in place:
session creation and memory are then those of the float model. Only the packed tensors are
read here; the file's other external data (weights.bin) ONNX Runtime reads itself, so no
copy of the model passes through protobuf (which stops at 2 GB)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Sequence

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper
from onnx.external_data_helper import set_external_data

from .. import contract
from ..format import BQQWeight
from ..layout import Layout
from ..tensors import TensorFiles

# Location named by the placeholders of decoded weights: never read (their data is given
# to ONNX Runtime directly), so it need not exist.
_DECODED = "bqq-decoded-in-memory"


def decoded_model(path: str | Path) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """The model at path with every BQQDecode node (and the Transpose that may follow it)
    replaced by an external-data placeholder initializer, and the decoded arrays by name;
    other external tensors are left where they are (files beside path)."""
    model = onnx.load(str(path), load_external_data=False)
    files = TensorFiles(Path(path).parent)
    graph = model.graph
    decoders = [n for n in graph.node if n.domain == contract.DOMAIN and n.op_type == contract.DECODE_OP]
    if not decoders:
        return model, {}
    body = next(f for f in model.functions if f.domain == contract.DOMAIN and f.name == contract.DECODE_OP)
    half = any(n.op_type == "Cast" and helper.get_attribute_value(n.attribute[0]) == onnx.TensorProto.FLOAT16
               for n in body.node if n.output[0] == body.output[0])
    inits = {i.name: i for i in graph.initializer}
    users = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            users[name].append(node)
    decoded, dropped_nodes, dropped_inits = {}, set(), set()
    for node in decoders:
        fields = {a.name: a.i for a in node.attribute}
        layout = Layout.checked({contract.MATMUL.attribute_fields[k]: v for k, v in fields.items()
                                 if k in contract.MATMUL.attribute_fields}, node.name)
        y, z, s = (torch.from_numpy(files.array(inits[name])) for name in node.input)
        w_hat = BQQWeight(layout.out_features, layout.in_features, layout.group_rows,
                          layout.group_cols, layout.rank, y, z, s).validate(node.name).dequantize()
        name, after = node.output[0], users[node.output[0]]
        if len(after) == 1 and after[0].op_type == "Transpose" and [
                list(a.ints) for a in after[0].attribute if a.name == "perm"] in ([[1, 0]], []):
            name, w_hat = after[0].output[0], w_hat.T
            dropped_nodes.add(id(after[0]))
        decoded[name] = np.ascontiguousarray((w_hat.half() if half else w_hat).numpy())
        dropped_nodes.add(id(node))
        dropped_inits.update(node.input)
    still_used = {name for node in graph.node if id(node) not in dropped_nodes for name in node.input}
    kept_nodes = [n for n in graph.node if id(n) not in dropped_nodes]
    del graph.node[:]
    graph.node.extend(kept_nodes)
    kept = [i for i in graph.initializer if i.name not in dropped_inits or i.name in still_used]
    for name, array in decoded.items():
        placeholder = numpy_helper.from_array(np.zeros(0, array.dtype), name)
        del placeholder.dims[:]
        placeholder.dims.extend(array.shape)
        set_external_data(placeholder, _DECODED, 0, array.nbytes)
        placeholder.data_location = onnx.TensorProto.EXTERNAL
        placeholder.ClearField("raw_data")
        kept.append(placeholder)
    del graph.initializer[:]
    graph.initializer.extend(kept)
    functions = [f for f in model.functions if not (f.domain == contract.DOMAIN and f.name == contract.DECODE_OP)]
    del model.functions[:]
    model.functions.extend(functions)
    return model, decoded


def ort_session(path: str | Path, options=None, providers: Sequence[str] | None = None):
    """An onnxruntime.InferenceSession for path; a portable bundle file's packed weights are
    decoded here (see the module docstring). The decoded arrays live as long as the session."""
    import onnxruntime as ort

    options = options or ort.SessionOptions()
    providers = list(providers or ["CPUExecutionProvider"])
    model, decoded = decoded_model(path)
    if not decoded:
        return ort.InferenceSession(str(path), options, providers=providers)
    values = [ort.OrtValue.ortvalue_from_numpy(array) for array in decoded.values()]
    options.add_external_initializers(list(decoded), values)
    # the file's own external data (weights.bin), found beside it though the bytes come from here
    options.add_session_config_entry("session.model_external_initializers_file_folder_path",
                                     str(Path(path).resolve().parent))
    session = ort.InferenceSession(model.SerializeToString(), options, providers=providers)
    session._bqq_decoded = (decoded, values)  # ONNX Runtime reads these buffers in place
    return session
