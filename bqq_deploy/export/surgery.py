"""ONNX graph surgery: find the MatMul / Gemm nodes whose weight is a constant (with a following
constant bias Add folded in), capture their input activations for calibration, and replace
each by one BQQMatMul node (portable form with a model-local function, or TensorRT plugin
form); plus the fp16 variant of a graph."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import torch
from onnx import TensorProto, helper, numpy_helper

from ..format import BQQWeight
from ..quantize import InputStatistics
from . import contract
from .function import bqq_matmul_function, node_attributes

log = logging.getLogger(__name__)

PORTABLE = "portable"
TENSORRT = "trt"


@dataclass
class Candidate:
    """One quantisable linear: y = x W^T (+ bias) computed by `node` (and `bias_node`).

    weight is W [M, K] (out x in) as float32, whatever the layout of the ONNX constant
    (MatMul stores W^T; Gemm stores W when transB=1). layer is the name the layer goes by
    (a torch parameter name when one matches, else the ONNX initializer name)."""

    node: str
    op_type: str
    weight_name: str
    weight: np.ndarray
    bias: np.ndarray | None
    bias_name: str | None
    bias_node: str | None
    input: str
    output: str
    layer: str = ""

    def __post_init__(self):
        self.layer = self.layer or self.weight_name

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.weight.shape)


def name_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of model where every node has a unique name (surgery finds nodes by name)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    seen = set()
    for index, node in enumerate(model.graph.node):
        name = node.name or f"{node.op_type}_{index}"
        while name in seen:
            name = f"{name}_{index}"
        node.name = name
        seen.add(name)
    return model


def _attr(node: gs.Node, key: str, default):
    return node.attrs.get(key, default)


def _const(tensor) -> np.ndarray | None:
    if isinstance(tensor, gs.Constant) and tensor.values.dtype == np.float32:
        return np.asarray(tensor.values)
    return None


def _bias_vector(values: np.ndarray | None, out_features: int, max_ndim: int) -> np.ndarray | None:
    """values as a bias [M] when it broadcasts as one over [..., M] without raising the
    output's rank (at most max_ndim dims), else None."""
    if (values is None or values.ndim > max_ndim or values.size != out_features
            or values.shape[-1:] != (out_features,)):
        return None
    return values.reshape(out_features)


def _weight_like(tensor) -> bool:
    """A constant, or a constant behind Identity (how torch.onnx shares equal tensors)."""
    if isinstance(tensor, gs.Constant):
        return True
    producers = getattr(tensor, "inputs", [])
    return len(producers) == 1 and producers[0].op == "Identity" and isinstance(
        producers[0].inputs[0], gs.Constant)


def find_candidates(model: onnx.ModelProto) -> tuple[list[Candidate], list[dict]]:
    """MatMul(x, B) with constant 2-D B, and Gemm(x, B[, C]) with constant B (alpha = 1,
    transA = 0, beta = 1 when C is given), each with a single-consumer bias Add folded in.
    Nodes must be named (name_nodes). Returns the candidates and, for every other MatMul /
    Gemm with a weight-like input B, {"layer", "onnx_node", "reason"}: why it stays in float."""
    graph = gs.import_onnx(model)
    consumers = {}
    for node in graph.nodes:
        for tensor in node.inputs:
            consumers[tensor.name] = consumers.get(tensor.name, 0) + 1
    graph_outputs = {t.name for t in graph.outputs}
    found, rejected = [], []

    def reject(node, reason: str) -> None:
        log.info("%s: %s; left in floating point", node.name, reason)
        rejected.append({"layer": node.inputs[1].name, "onnx_node": node.name, "reason": reason})

    for node in graph.nodes:
        if node.op not in ("MatMul", "Gemm") or len(node.inputs) < 2:
            continue
        x, b_tensor = node.inputs[0], node.inputs[1]
        if isinstance(x, gs.Constant) or not _weight_like(b_tensor):
            continue  # activation x activation (e.g. attention scores): not a linear layer
        b = _const(b_tensor)
        if b is None:
            reject(node, f"weight {b_tensor.name} is not a float32 initializer of its own "
                         "(an Identity of a shared constant)" if not isinstance(b_tensor, gs.Constant)
                   else f"weight {b_tensor.name} is not float32")
            continue
        if b.ndim != 2:
            reject(node, f"weight {b_tensor.name} has {b.ndim} dims, not 2")
            continue
        if consumers[b_tensor.name] > 1:
            reject(node, f"weight {b_tensor.name} feeds {consumers[b_tensor.name]} nodes")
            continue
        bias = bias_name = bias_node = None
        out = node.outputs[0]
        if node.op == "Gemm":
            if _attr(node, "alpha", 1.0) != 1.0 or _attr(node, "transA", 0):
                reject(node, "Gemm with alpha != 1 or transA")
                continue
            weight = b if _attr(node, "transB", 0) else b.T
            if len(node.inputs) > 2 and node.inputs[2].name:
                c_tensor = node.inputs[2]
                bias = _bias_vector(_const(c_tensor), weight.shape[0], max_ndim=2)
                if bias is None or _attr(node, "beta", 1.0) != 1.0:
                    reject(node, f"Gemm bias {c_tensor.name} is not a float32 [M] constant with beta 1")
                    continue
                if consumers[c_tensor.name] > 1:
                    reject(node, f"Gemm bias {c_tensor.name} feeds {consumers[c_tensor.name]} nodes")
                    continue
                bias_name = c_tensor.name
        else:
            weight = b.T
        if bias is None and len(out.outputs) == 1 and out.name not in graph_outputs:
            add = out.outputs[0]
            if add.op == "Add" and len(add.inputs) == 2:
                other = add.inputs[1] if add.inputs[0] is out else add.inputs[0]
                vector = _bias_vector(_const(other), weight.shape[0], max_ndim=1)
                if vector is not None and consumers[other.name] == 1:
                    bias, bias_name, bias_node, out = vector, other.name, add.name, add.outputs[0]
        found.append(Candidate(node=node.name, op_type=node.op, weight_name=b_tensor.name,
                               weight=np.ascontiguousarray(weight, dtype=np.float32),
                               bias=None if bias is None else bias.astype(np.float32).copy(),
                               bias_name=bias_name, bias_node=bias_node, input=x.name,
                               output=out.name))
    return found, rejected


def capture_inputs(model: onnx.ModelProto, candidates: list[Candidate],
                   feeds_list: list[dict]) -> dict[str, InputStatistics]:
    """Statistics of each candidate's input activations over feeds_list, by running the fp32
    model in ONNX Runtime with those tensors added as graph outputs. Keyed by candidate.layer;
    layers that read the same tensor share one InputStatistics."""
    import onnxruntime as ort

    model = onnx.ModelProto.FromString(model.SerializeToString())
    existing = {o.name for o in model.graph.output}
    names = list(dict.fromkeys(c.input for c in candidates))
    for name in names:
        if name not in existing:
            model.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    stats: dict[str, InputStatistics] = {}
    for feeds in feeds_list:
        for name, value in zip(names, session.run(names, feeds)):
            stats.setdefault(name, InputStatistics(value.shape[-1])).add(torch.from_numpy(value))
    return {c.layer: stats[c.input] for c in candidates}


def replace_with_bqq(model: onnx.ModelProto, candidates: list[Candidate],
                     weights: dict[str, BQQWeight], form: str) -> onnx.ModelProto:
    """A copy of model with every candidate replaced by one BQQMatMul node.

    form PORTABLE: the node calls the model-local function bqq::BQQMatMul (ONNX Runtime);
    its bias input is always present (zeros when the layer has none), as the function body
    adds it. form TENSORRT: plugin attributes, no function, bias only when the layer has one.
    Names: node `<layer>.BQQMatMul`, initializers `<layer>.bqq.{y_bits,z_bits,scales,bias}`.
    The float weights (and folded biases) leave the graph."""
    if form not in (PORTABLE, TENSORRT):
        raise ValueError(f"form must be {PORTABLE!r} or {TENSORRT!r}, got {form!r}")
    graph = gs.import_onnx(model)
    nodes = {node.name: node for node in graph.nodes}
    for cand in candidates:
        weight = weights[cand.layer]
        node = nodes[cand.node]
        x = node.inputs[0]
        out_node = nodes[cand.bias_node] if cand.bias_node else node
        out = out_node.outputs[0]
        prefix = f"{cand.layer}.bqq"
        inputs = [x,
                  gs.Constant(f"{prefix}.y_bits", weight.y_bits.numpy()),
                  gs.Constant(f"{prefix}.z_bits", weight.z_bits.numpy()),
                  gs.Constant(f"{prefix}.scales", weight.scales.numpy().astype(np.float16))]
        bias = weight.bias.numpy().astype(np.float32) if weight.bias is not None else None
        if bias is None and form == PORTABLE:
            bias = np.zeros(weight.out_features, np.float32)
        if bias is not None:
            inputs.append(gs.Constant(f"{prefix}.bias", bias))
        out_node.outputs.clear()
        node.inputs.clear()
        if out_node is not node:
            out_node.inputs.clear()
            node.outputs.clear()
        graph.nodes.append(gs.Node(op=contract.OP_TYPE, name=f"{cand.layer}.{contract.OP_TYPE}",
                                   domain=contract.DOMAIN,
                                   attrs=node_attributes(weight, plugin=form == TENSORRT),
                                   inputs=inputs, outputs=[out]))
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    result = gs.export_onnx(graph, do_type_check=False)
    result.ir_version = model.ir_version
    del result.opset_import[:]
    result.opset_import.extend(o for o in model.opset_import if o.domain != contract.DOMAIN)
    result.opset_import.append(helper.make_opsetid(contract.DOMAIN, contract.DOMAIN_VERSION))
    del result.functions[:]
    result.functions.extend(model.functions)
    if form == PORTABLE:
        opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
        result.functions.append(bqq_matmul_function(opset))
    del result.graph.value_info[:]  # stale after the rewrite; consumers re-infer shapes
    return result


def with_weights(model: onnx.ModelProto, candidates: list[Candidate],
                 weights: dict[str, BQQWeight]) -> onnx.ModelProto:
    """A copy of model whose candidate weights are replaced by their dequantised W_hat (and
    biases by the quantiser's biases): the float reference the BQQ files must match."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    inits = {init.name: init for init in model.graph.initializer}
    nodes = {node.name: node for node in model.graph.node}
    added: dict[str, onnx.NodeProto] = {}
    for cand in candidates:
        weight = weights[cand.layer]
        w_hat = weight.dequantize().numpy()
        node = nodes[cand.node]
        trans_b = any(a.name == "transB" and a.i for a in node.attribute)
        stored = w_hat if (cand.op_type == "Gemm" and trans_b) else w_hat.T
        inits[cand.weight_name].CopyFrom(numpy_helper.from_array(
            np.ascontiguousarray(stored, np.float32), cand.weight_name))
        if cand.bias_name is not None:
            old = numpy_helper.to_array(inits[cand.bias_name])
            new = (weight.bias.numpy() if weight.bias is not None
                   else np.zeros(weight.out_features, np.float32)).reshape(old.shape)
            inits[cand.bias_name].CopyFrom(numpy_helper.from_array(new.astype(np.float32),
                                                                   cand.bias_name))
        elif weight.bias is not None:  # a bias the calibration added: an Add after the node
            bias_name = f"{cand.layer}.bqq_reference.bias"
            model.graph.initializer.append(numpy_helper.from_array(
                weight.bias.numpy().astype(np.float32), bias_name))
            unbiased = f"{cand.output}.bqq_reference.unbiased"
            node.output[0] = unbiased
            added[node.name] = helper.make_node("Add", [unbiased, bias_name], [cand.output],
                                                name=f"{cand.layer}.bias_add")
    if added:  # keep the node list topologically sorted: each Add right after its node
        ordered = []
        for node in model.graph.node:
            ordered += [node] + ([added[node.name]] if node.name in added else [])
        del model.graph.node[:]
        model.graph.node.extend(ordered)
    return model


def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same graph with fp16 activations: float32 initializers, Constant / ConstantOfShape
    values, Cast-to-float targets and the graph inputs / outputs become float16 (for strongly
    typed TensorRT builds, where precision comes from the tensor types)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph

    def half(tensor: onnx.TensorProto) -> None:
        if tensor.data_type == TensorProto.FLOAT:
            array = numpy_helper.to_array(tensor)
            if np.isfinite(array).all() and np.abs(array).max(initial=0) > 65504:
                log.warning("%s: values beyond the fp16 range are clipped", tensor.name)
            tensor.CopyFrom(numpy_helper.from_array(
                np.clip(array, -65504, 65504).astype(np.float16), tensor.name))

    for init in graph.initializer:
        half(init)
    for node in graph.node:
        if node.op_type == "Constant":  # value_float(s) are fp32 by definition: make a tensor
            for attr in list(node.attribute):
                if attr.name in ("value_float", "value_floats"):
                    values = [attr.f] if attr.name == "value_float" else list(attr.floats)
                    array = np.array(values if attr.name == "value_floats" else values[0], np.float32)
                    node.attribute.remove(attr)
                    node.attribute.append(helper.make_attribute("value", numpy_helper.from_array(array)))
        if node.op_type == "ConstantOfShape" and not any(a.name == "value" for a in node.attribute):
            # the default fill is a float32 zero
            node.attribute.append(helper.make_attribute("value", numpy_helper.from_array(
                np.zeros(1, np.float32))))
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                half(attr.t)
            elif node.op_type == "Cast" and attr.name == "to" and attr.i == TensorProto.FLOAT:
                attr.i = TensorProto.FLOAT16
    for value in list(graph.input) + list(graph.output):
        if value.type.tensor_type.elem_type == TensorProto.FLOAT:
            value.type.tensor_type.elem_type = TensorProto.FLOAT16
    del graph.value_info[:]
    return model
