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
from onnx import TensorProto, helper, numpy_helper

from ..format import BQQWeight
from .function import (DOMAIN, DOMAIN_VERSION, OP_TYPE, bqq_matmul_function, int8_bits,
                       node_attributes)

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


def _bias_vector(values: np.ndarray | None, out_features: int) -> np.ndarray | None:
    """values as a bias [M] when it broadcasts as one over [..., M], else None."""
    if values is None or values.size != out_features or values.shape[-1:] != (out_features,):
        return None
    return values.reshape(out_features)


def find_candidates(model: onnx.ModelProto) -> list[Candidate]:
    """MatMul(x, B) with constant 2-D B, and Gemm(x, B[, C]) with constant B (alpha = 1,
    transA = 0, beta = 1 when C is given), each with a single-consumer bias Add folded in.
    Nodes must be named (name_nodes). A constant used by several nodes is left alone."""
    graph = gs.import_onnx(model)
    consumers = {}
    for node in graph.nodes:
        for tensor in node.inputs:
            consumers[tensor.name] = consumers.get(tensor.name, 0) + 1
    graph_outputs = {t.name for t in graph.outputs}
    found = []
    for node in graph.nodes:
        if node.op not in ("MatMul", "Gemm") or len(node.inputs) < 2:
            continue
        x, b_tensor = node.inputs[0], node.inputs[1]
        b = _const(b_tensor)
        if isinstance(x, gs.Constant) or b is None or b.ndim != 2:
            continue
        if consumers[b_tensor.name] > 1:
            log.info("%s: weight %s feeds %d nodes; left in floating point", node.name,
                     b_tensor.name, consumers[b_tensor.name])
            continue
        bias = bias_name = bias_node = None
        out = node.outputs[0]
        if node.op == "Gemm":
            if _attr(node, "alpha", 1.0) != 1.0 or _attr(node, "transA", 0):
                continue
            weight = b if _attr(node, "transB", 0) else b.T
            if len(node.inputs) > 2 and node.inputs[2].name:
                bias = _bias_vector(_const(node.inputs[2]), weight.shape[0])
                if bias is None or _attr(node, "beta", 1.0) != 1.0:
                    continue
                bias_name = node.inputs[2].name
        else:
            weight = b.T
        if bias is None and len(out.outputs) == 1 and out.name not in graph_outputs:
            add = out.outputs[0]
            if add.op == "Add" and len(add.inputs) == 2:
                other = add.inputs[1] if add.inputs[0] is out else add.inputs[0]
                vector = _bias_vector(_const(other), weight.shape[0])
                if vector is not None and consumers[other.name] == 1:
                    bias, bias_name, bias_node, out = vector, other.name, add.name, add.outputs[0]
        found.append(Candidate(node=node.name, op_type=node.op, weight_name=b_tensor.name,
                               weight=np.ascontiguousarray(weight, dtype=np.float32),
                               bias=None if bias is None else bias.astype(np.float32).copy(),
                               bias_name=bias_name, bias_node=bias_node, input=x.name,
                               output=out.name))
    return found


def capture_inputs(model: onnx.ModelProto, candidates: list[Candidate],
                   feeds_list: list[dict]) -> dict[str, np.ndarray]:
    """Each candidate's input activations [N, K] over feeds_list, by running the fp32 model
    in ONNX Runtime with those tensors added as graph outputs. Keyed by candidate.layer."""
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
    captured: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for feeds in feeds_list:
        for name, value in zip(names, session.run(names, feeds)):
            captured[name].append(value.reshape(-1, value.shape[-1]))
    return {c.layer: np.concatenate(captured[c.input]) for c in candidates}


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
                  gs.Constant(f"{prefix}.y_bits", int8_bits(weight.y_bits.numpy())),
                  gs.Constant(f"{prefix}.z_bits", int8_bits(weight.z_bits.numpy())),
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
        graph.nodes.append(gs.Node(op=OP_TYPE, name=f"{cand.layer}.{OP_TYPE}", domain=DOMAIN,
                                   attrs=node_attributes(weight, plugin=form == TENSORRT),
                                   inputs=inputs, outputs=[out]))
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    result = gs.export_onnx(graph, do_type_check=False)
    result.ir_version = model.ir_version
    del result.opset_import[:]
    result.opset_import.extend(o for o in model.opset_import if o.domain != DOMAIN)
    result.opset_import.append(helper.make_opsetid(DOMAIN, DOMAIN_VERSION))
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
