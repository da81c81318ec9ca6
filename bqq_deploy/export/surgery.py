"""ONNX graph surgery: find the MatMul / Gemm nodes whose weight is a constant (with a following
constant bias Add folded in), capture their input activations for calibration, and replace
each by one BQQMatMul node (portable form with a model-local function, or TensorRT plugin
form); plus the fp16 variant of a graph."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import torch
from onnx import TensorProto, helper, numpy_helper

from ..format import BQQWeight
from ..quantize import InputStatistics
from .. import contract
from . import forms
from .function import decode_function, node_attributes
from ..tensors import TensorFiles, assign, values

log = logging.getLogger(__name__)

PORTABLE = "portable"
TENSORRT = "trt"
# The model input whose zeros mark padded positions in calibration feeds (text models).
ATTENTION_MASK = "attention_mask"


@dataclass
class Candidate:
    """One quantisable linear: y = x W^T (+ bias) computed by `node` (and `bias_node`).

    weight is W [M, K] (out x in) as float32, whatever the layout of the ONNX constant
    (MatMul stores W^T; Gemm stores W when transB=1), read from the graph each time it is
    asked for (a large model's weights are not all held at once). layer is the name the
    layer goes by (a torch parameter name when one matches, else the ONNX initializer name)."""

    node: str
    op_type: str
    weight_name: str
    shape: tuple[int, int]  # [M, K]
    read: Callable[[], np.ndarray] = field(repr=False, compare=False)  # W [M, K] float32
    bias: np.ndarray | None
    bias_name: str | None
    bias_node: str | None
    input: str
    output: str
    layer: str = ""
    module: str | None = None  # the torch module path the file records for the node
    use: int = 0  # index among the nodes that share this weight (one layer, one BQQ weight)

    def __post_init__(self):
        self.layer = self.layer or self.weight_name

    @property
    def weight(self) -> np.ndarray:
        return self.read()

    @property
    def bqq_node(self) -> str:
        """Name of the BQQMatMul node that replaces this one: `<layer>.BQQMatMul`, and
        `<layer>.BQQMatMul.<use>` for the further nodes of a shared weight."""
        op = contract.GATHER if self.op_type == "Gather" else contract.MATMUL
        base = f"{self.layer}.{op.op_type}"
        return f"{base}.{self.use}" if self.use else base

    @property
    def names(self) -> list[str]:
        """Every name --exclude patterns are matched against."""
        return [n for n in (self.layer, self.module, self.weight_name, self.node) if n]


def name_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of model where every node has a unique name (surgery finds nodes by name)."""
    model = forms.copy_model(model)
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


def _const(tensor) -> bool:
    """A float32 constant (its values are not read here)."""
    return isinstance(tensor, gs.Constant) and tensor.dtype == np.float32


def _reader(tensor: onnx.TensorProto, data: TensorFiles | None, transpose: bool):
    """A function returning tensor's values (transposed) as a writable C-order float32 array."""
    def read() -> np.ndarray:
        array = values(tensor, data)
        return np.require(array.T if transpose else array, np.float32, ["C", "W"])
    return read


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


def find_candidates(model: onnx.ModelProto, data: TensorFiles | None = None
                    ) -> tuple[list[Candidate], list[dict]]:
    """MatMul(x, B) with constant 2-D B, and Gemm(x, B[, C]) with constant B (alpha = 1,
    transA = 0, beta = 1 when C is given), each with a single-consumer bias Add folded in.
    model must be in forms.normalize's form with named nodes (name_nodes).

    A weight read by several such nodes (tied or merged weights) is one layer: each node is a
    candidate with the same layer and its own `use`; their biases are not folded (they may
    differ). Returns the candidates and, for every other MatMul / Gemm with a weight-like
    input B (linears inside If / Loop / Scan subgraphs included), {"layer", "onnx_node",
    "reason"}: why it stays in float. Layers are named after the module path the file records
    (forms.module_path), else the weight. data: where model's large tensors are
    (tensors.TensorFiles; None: inline); no weight is read here, only biases."""
    graph = gs.import_onnx(model)
    protos = {node.name: node for node in model.graph.node}
    inits = {init.name: init for init in model.graph.initializer}

    def bias_values(tensor) -> np.ndarray | None:
        return values(inits[tensor.name], data) if _const(tensor) and tensor.name in inits else None

    consumers: dict[str, list] = {}
    for node in graph.nodes:
        for tensor in node.inputs:
            consumers.setdefault(tensor.name, []).append(node)
    graph_outputs = {t.name for t in graph.outputs}
    found, rejected = [], []

    def reject(node, reason: str, name: str | None = None) -> None:
        log.info("%s: %s; left in floating point", node.name, reason)
        rejected.append({"layer": name or node.inputs[1].name, "onnx_node": node.name,
                         "reason": reason})

    for node in graph.nodes:
        if node.op not in ("MatMul", "Gemm") or len(node.inputs) < 2:
            continue
        x, b_tensor = node.inputs[0], node.inputs[1]
        if isinstance(x, gs.Constant) or not _weight_like(b_tensor):
            continue  # activation x activation (e.g. attention scores): not a linear layer
        if not _const(b_tensor) or b_tensor.name not in inits:
            reject(node, f"weight {b_tensor.name} is not a float32 initializer of its own "
                         "(an Identity of a shared constant)" if not isinstance(b_tensor, gs.Constant)
                   else f"weight {b_tensor.name} is not float32")
            continue
        if len(b_tensor.shape) != 2:
            reject(node, f"weight {b_tensor.name} has {len(b_tensor.shape)} dims, not 2")
            continue
        readers = consumers[b_tensor.name]
        other = next((r for r in readers if r.op not in ("MatMul", "Gemm") or r.inputs[1] is not b_tensor
                      or isinstance(r.inputs[0], gs.Constant)), None)
        if other is not None:
            reject(node, f"weight {b_tensor.name} also feeds {other.op} node {other.name} "
                         "(tied to a use that is not a linear layer)")
            continue
        shared = len(readers) > 1
        bias = bias_name = bias_node = None
        out = node.outputs[0]
        if node.op == "Gemm":
            if _attr(node, "alpha", 1.0) != 1.0 or _attr(node, "transA", 0):
                reject(node, "Gemm with alpha != 1 or transA")
                continue
            transposed = not _attr(node, "transB", 0)
            rows = b_tensor.shape[1] if transposed else b_tensor.shape[0]
            if len(node.inputs) > 2 and node.inputs[2].name:
                c_tensor = node.inputs[2]
                bias = _bias_vector(bias_values(c_tensor), rows, max_ndim=2)
                if bias is None or _attr(node, "beta", 1.0) != 1.0:
                    reject(node, f"Gemm bias {c_tensor.name} is not a float32 [M] constant with beta 1")
                    continue
                if len(consumers[c_tensor.name]) > 1 or shared:
                    reject(node, f"Gemm bias {c_tensor.name} feeds {len(consumers[c_tensor.name])} nodes"
                           if not shared else f"Gemm with weight {b_tensor.name} shared by "
                           f"{len(readers)} nodes, each with its own bias input")
                    continue
                bias_name = c_tensor.name
        else:
            transposed, rows = True, b_tensor.shape[1]
        if bias is None and not shared and len(out.outputs) == 1 and out.name not in graph_outputs:
            add = out.outputs[0]
            if add.op == "Add" and len(add.inputs) == 2:
                other_input = add.inputs[1] if add.inputs[0] is out else add.inputs[0]
                vector = _bias_vector(bias_values(other_input), rows, max_ndim=1)
                if vector is not None and len(consumers[other_input.name]) == 1:
                    bias, bias_name, bias_node, out = vector, other_input.name, add.name, add.outputs[0]
        shape = tuple(int(d) for d in (b_tensor.shape[::-1] if transposed else b_tensor.shape))
        found.append(Candidate(node=node.name, op_type=node.op, weight_name=b_tensor.name,
                               shape=shape, read=_reader(inits[b_tensor.name], data, transposed),
                               bias=None if bias is None else bias.astype(np.float32).copy(),
                               bias_name=bias_name, bias_node=bias_node, input=x.name,
                               output=out.name, module=forms.module_path(protos[node.name])))
    _share_and_name(found, rejected)
    rejected += _subgraph_linears(model.graph)
    return found, rejected


def _share_and_name(found: list[Candidate], rejected: list[dict]) -> None:
    """Give every candidate its layer name (the module path of the weight's first node when
    the file records one and no other weight has it, else the weight name) and number the
    nodes of a shared weight. A shared weight read as W by one node and W^T by another
    cannot be one BQQ weight: those nodes move to rejected."""
    by_weight: dict[str, list[Candidate]] = {}
    for cand in found:
        by_weight.setdefault(cand.weight_name, []).append(cand)
    for name, group in by_weight.items():
        first = group[0].weight if len(group) > 1 else None  # read from disk once
        if any(c.op_type != group[0].op_type or c.shape != group[0].shape
               or not np.array_equal(c.weight, first) for c in group[1:]):
            for cand in group:
                found.remove(cand)
                rejected.append({"layer": name, "onnx_node": cand.node, "reason": f"weight {name} "
                                 "is read both as W and as W^T by different nodes"})
            continue
        for use, cand in enumerate(group):
            cand.use = use
    paths: dict[str, set[str]] = {}
    for cand in found:
        if cand.module:
            paths.setdefault(cand.module, set()).add(cand.weight_name)
    for cand in found:
        first = by_weight[cand.weight_name][0]
        if first.module and len(paths[first.module]) == 1:
            cand.layer = first.module


def _subgraph_linears(graph: onnx.GraphProto, where: str = "") -> list[dict]:
    """MatMul / Gemm nodes inside If / Loop / Scan bodies whose B input is not computed in
    the body (an initializer, a Constant, or a value captured from outside): linear layers
    that stay in float, each with the reason."""
    found = []
    for node in graph.node:
        for attr in node.attribute:
            subs = ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else
                    list(attr.graphs) if attr.type == onnx.AttributeProto.GRAPHS else [])
            for sub in subs:
                place = f"{where}{node.op_type} node {node.name or node.output[0]}, {attr.name}"
                produced = {o for n in sub.node if n.op_type != "Constant" for o in n.output}
                produced |= {i.name for i in sub.input}
                for inner in sub.node:
                    if (inner.op_type in ("MatMul", "Gemm") and len(inner.input) > 1
                            and inner.input[1] not in produced):
                        found.append({"layer": inner.input[1], "onnx_node": inner.name or inner.output[0],
                                      "reason": f"inside the {place} (linear layers in If / Loop / "
                                                "Scan subgraphs are not rewritten)"})
                found += _subgraph_linears(sub, f"{place} > ")
    return found


def find_embeddings(model: onnx.ModelProto, data: TensorFiles | None = None
                    ) -> tuple[list[Candidate], list[dict]]:
    """Gather(table, indices) on axis 0 of a constant float32 2-D table with run-time indices:
    an embedding lookup, whose table W [M rows = tokens, K = width] BQQ stores like a linear
    weight. Returns candidates (op_type "Gather", input = the indices) and, for tables it
    cannot take, {"layer", "onnx_node", "reason"}. No table is read here (data: see
    find_candidates)."""
    graph = gs.import_onnx(model)
    inits = {init.name: init for init in model.graph.initializer}
    protos = {node.name: node for node in model.graph.node}
    users: dict[str, list] = {}
    for node in graph.nodes:
        for tensor in node.inputs:
            users.setdefault(tensor.name, []).append(node)
    found, rejected = [], []
    for node in graph.nodes:
        if node.op != "Gather" or len(node.inputs) != 2:
            continue
        table, indices = node.inputs
        if (not _const(table) or table.name not in inits or len(table.shape) != 2
                or isinstance(indices, gs.Constant)):
            continue
        reason = None
        if _attr(node, "axis", 0) != 0:
            reason = "gathers along axis 1, not rows"
        elif len(users[table.name]) > 1:
            reason = (f"table {table.name} also feeds "
                      + ", ".join(sorted({n.op for n in users[table.name] if n is not node})))
        if reason:
            log.info("%s: %s; left in floating point", node.name, reason)
            rejected.append({"layer": table.name, "onnx_node": node.name, "reason": reason})
            continue
        found.append(Candidate(node=node.name, op_type="Gather", weight_name=table.name,
                               shape=tuple(int(d) for d in table.shape),
                               read=_reader(inits[table.name], data, False), bias=None, bias_name=None,
                               bias_node=None, input=indices.name, output=node.outputs[0].name,
                               module=forms.module_path(protos[node.name])))
    return found, rejected


class InputCapture:
    """The fp32 model in ONNX Runtime with the input tensor of every candidate added as a
    graph output, from which the statistics of any group of those layers are captured: one
    group at a time, the statistics held at once stay bounded (a large layer's E[x x^T] is
    K x K float64). holdout: every 8th sample of the statistics is held out for the guard."""

    def __init__(self, model: onnx.ModelProto, candidates: list[Candidate],
                 data: TensorFiles | None = None, holdout: bool = True):
        import onnxruntime as ort

        self.holdout = holdout
        model = forms.copy_model(model)
        existing = {o.name for o in model.graph.output}
        for name in dict.fromkeys(c.input for c in candidates):
            if name not in existing:
                model.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
        options = ort.SessionOptions()
        options.log_severity_level = 4  # errors arrive as exceptions
        with forms.session_path(model, data) as what:
            self.session = ort.InferenceSession(what, options, providers=["CPUExecutionProvider"])

    def statistics(self, candidates: list[Candidate], feeds_list: list[dict]) -> dict[str, InputStatistics]:
        """Statistics of each candidate's input activations over feeds_list, keyed by
        candidate.layer; layers that read the same tensors share one InputStatistics (one
        metric for the solver). Padded positions are dropped where a feed has an input
        named attention_mask whose shape matches the rows (InputStatistics.add); with
        self.holdout every 8th sample is held out for the guard."""
        names = list(dict.fromkeys(c.input for c in candidates))
        # A tensor read by several layers is captured once; a layer whose weight several
        # nodes share sees the rows of all of them.
        reads: dict[str, list[str]] = {}
        for cand in candidates:
            if cand.input not in reads.setdefault(cand.layer, []):
                reads[cand.layer].append(cand.input)
        shared: dict[tuple, InputStatistics] = {}
        for feeds in feeds_list:
            mask = feeds.get(ATTENTION_MASK)
            mask = None if mask is None else torch.from_numpy(np.asarray(mask))
            outputs = dict(zip(names, self.session.run(names, feeds)))
            for tensors in dict.fromkeys(tuple(t) for t in reads.values()):
                for name in tensors:
                    if tensors not in shared:
                        shared[tensors] = InputStatistics(outputs[name].shape[-1], holdout=self.holdout)
                    shared[tensors].add(torch.from_numpy(outputs[name]), mask)
        return {layer: shared[tuple(tensors)] for layer, tensors in reads.items()}


def replace_with_bqq(model: onnx.ModelProto, candidates: list[Candidate],
                     weights: dict[str, BQQWeight], form: str,
                     data: TensorFiles | None = None) -> onnx.ModelProto:
    """A copy of model in which every candidate's float weight is replaced by its packed
    tensors (initializers `<layer>.bqq.{y_bits,z_bits,scales,bias}`).

    form PORTABLE (ONNX Runtime): the graph keeps its own ops; each weight is the output of a
    bqq::BQQDecode node (a model-local function) on the packed tensors, transposed where the
    graph stored W^T, so ONNX Runtime folds the file back into the float graph when it loads
    it. form TENSORRT: each linear becomes one BQQMatMul plugin node (bias folded in, only
    when the layer has one) and each embedding lookup one BQQGather plugin node, with no
    function at all. data: where model's large tensors are, and the new ones go
    (tensors.TensorFiles; None: inline)."""
    if form == PORTABLE:
        return _substitute(model, candidates, weights, True, data)
    if form != TENSORRT:
        raise ValueError(f"form must be {PORTABLE!r} or {TENSORRT!r}, got {form!r}")
    graph = gs.import_onnx(model)
    nodes = {node.name: node for node in graph.nodes}
    for cand in candidates:
        weight, node = weights[cand.layer], nodes[cand.node]
        packed = _packed_constants(cand.layer, weight)
        if cand.op_type == "Gather":
            # The plugin's output has the dtype of its scales: float32 here, float16 after to_fp16.
            packed[2] = gs.Constant(packed[2].name, weight.scales.numpy().astype(np.float32))
            op, inputs, out = contract.GATHER, [node.inputs[1], *packed], node.outputs[0]
            node.inputs.clear()
            node.outputs.clear()
        else:
            out_node = nodes[cand.bias_node] if cand.bias_node else node
            op, inputs, out = contract.MATMUL, [node.inputs[0], *packed], out_node.outputs[0]
            if weight.bias is not None:
                inputs.append(gs.Constant(f"{cand.layer}.bqq.bias", weight.bias.numpy().astype(np.float32)))
            for dropped in [node] if out_node is node else [node, out_node]:
                dropped.inputs.clear()
                dropped.outputs.clear()
        graph.nodes.append(gs.Node(op=op.op_type, name=cand.bqq_node, domain=op.domain,
                                   attrs=node_attributes(weight, op), inputs=inputs, outputs=[out]))
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    result = gs.export_onnx(graph, do_type_check=False)
    result.ir_version = model.ir_version
    del result.opset_import[:]
    result.opset_import.extend(model.opset_import)
    del result.functions[:]
    result.functions.extend(model.functions)
    del result.graph.value_info[:]  # stale after the rewrite; consumers re-infer shapes
    if data is not None:
        data.externalize(result)
    return _with_bqq_domain(result)


def _packed_constants(layer: str, weight: BQQWeight) -> list:
    return [gs.Constant(f"{layer}.bqq.y_bits", weight.y_bits.numpy()),
            gs.Constant(f"{layer}.bqq.z_bits", weight.z_bits.numpy()),
            gs.Constant(f"{layer}.bqq.scales", weight.scales.numpy())]


def _with_bqq_domain(model: onnx.ModelProto) -> onnx.ModelProto:
    kept = [o for o in model.opset_import if o.domain != contract.DOMAIN]
    del model.opset_import[:]
    model.opset_import.extend(kept + [helper.make_opsetid(contract.DOMAIN, contract.DOMAIN_VERSION)])
    return model


def with_weights(model: onnx.ModelProto, candidates: list[Candidate],
                 weights: dict[str, BQQWeight], data: TensorFiles | None = None) -> onnx.ModelProto:
    """A copy of model whose candidate weights are replaced by their dequantised W_hat (and
    biases by the quantiser's biases): the float reference the BQQ files must match."""
    return _substitute(model, candidates, weights, False, data)


def _substitute(model: onnx.ModelProto, candidates: list[Candidate],
                weights: dict[str, BQQWeight], packed: bool,
                data: TensorFiles | None) -> onnx.ModelProto:
    """model with each candidate's weight and bias replaced by the quantiser's, its ops
    unchanged: as dense W_hat initializers, or (packed) as BQQDecode nodes on the packed
    tensors, named like the initializers they replace (so every consumer reads them)."""
    model = forms.copy_model(model)
    graph = model.graph
    inits = {init.name: init for init in graph.initializer}
    nodes = {node.name: node for node in graph.node}
    decoders, added, replaced = [], {}, set()
    for cand in candidates:
        weight, node = weights[cand.layer], nodes[cand.node]
        trans_b = any(a.name == "transB" and a.i for a in node.attribute)
        # The graph stores [M, K] for a Gather table or a Gemm with transB, else W^T.
        transposed = not (cand.op_type == "Gather" or (cand.op_type == "Gemm" and trans_b))
        if cand.weight_name not in replaced:
            replaced.add(cand.weight_name)
            if packed:
                for const in _packed_constants(cand.layer, weight):
                    assign(graph.initializer.add(), const.values, data, const.name)
                    inits[const.name] = graph.initializer[-1]
                decoded = f"{cand.layer}.bqq.weight" if transposed else cand.weight_name
                decoders.append(helper.make_node(
                    contract.DECODE_OP, [f"{cand.layer}.bqq.{k}" for k in ("y_bits", "z_bits", "scales")],
                    [decoded], name=f"{cand.layer}.{contract.DECODE_OP}", domain=contract.DOMAIN,
                    **node_attributes(weight)))
                if transposed:
                    decoders.append(helper.make_node("Transpose", [decoded], [cand.weight_name],
                                                     name=f"{cand.layer}.bqq.transpose", perm=[1, 0]))
            else:
                w_hat = weight.dequantize().numpy()
                assign(inits[cand.weight_name], (w_hat.T if transposed else w_hat).astype(np.float32),
                       data)
        if cand.bias_name is not None:
            shape = tuple(inits[cand.bias_name].dims)
            new = (weight.bias.numpy() if weight.bias is not None
                   else np.zeros(weight.out_features, np.float32)).reshape(shape)
            assign(inits[cand.bias_name], new.astype(np.float32), data)
        elif weight.bias is not None:  # a bias the calibration added: an Add after the node
            bias_name = f"{cand.layer}.bqq.bias"
            if bias_name not in inits:  # once for a weight several nodes share
                assign(graph.initializer.add(), weight.bias.numpy().astype(np.float32), data, bias_name)
                inits[bias_name] = graph.initializer[-1]
            unbiased = f"{cand.output}.bqq.unbiased"
            node.output[0] = unbiased
            added[node.name] = helper.make_node("Add", [unbiased, bias_name], [cand.output],
                                                name=f"{cand.bqq_node}.bias_add")
    if packed:  # the float weights leave the file (and the graph inputs, in old IR versions)
        kept = [i for i in graph.initializer if i.name not in replaced]
        del graph.initializer[:]
        graph.initializer.extend(kept)
        inputs = [i for i in graph.input if i.name not in replaced]
        del graph.input[:]
        graph.input.extend(inputs)
    # Topological order: the decoders first (they read initializers only), each Add right
    # after its node.
    ordered = list(decoders)
    for node in graph.node:
        ordered += [node] + ([added[node.name]] if node.name in added else [])
    del graph.node[:]
    graph.node.extend(ordered)
    if packed:
        opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
        model.functions.append(decode_function(opset))
        del graph.value_info[:]
        _with_bqq_domain(model)
    return model


def to_fp16(model: onnx.ModelProto, data: TensorFiles | None = None) -> onnx.ModelProto:
    """The same graph with fp16 activations: float32 initializers, Constant / ConstantOfShape
    values, Cast-to-float targets and the graph inputs / outputs become float16 (for strongly
    typed TensorRT builds, where precision comes from the tensor types); the portable form's
    BQQ functions are replaced by their float16 variants (the decoded W_hat is float16).
    data: see replace_with_bqq (initializers; node attributes are always inline)."""
    model = forms.copy_model(model)

    def half(tensor: onnx.TensorProto, data: TensorFiles | None = None) -> None:
        if tensor.data_type == TensorProto.FLOAT:
            array = np.require(values(tensor, data), requirements=["W"])  # clipped in place
            if np.isfinite(array).all() and np.abs(array).max(initial=0) > 65504:
                log.warning("%s: values beyond the fp16 range are clipped", tensor.name)
            assign(tensor, np.clip(array, -65504, 65504, out=array).astype(np.float16), data)

    def convert(graph: onnx.GraphProto) -> None:  # a graph and, in turn, its If/Loop bodies
        for init in graph.initializer:
            half(init, data)
        for node in graph.node:
            if node.op_type == "Constant":  # value_float(s) are fp32 by definition: make a tensor
                for attr in list(node.attribute):
                    if attr.name in ("value_float", "value_floats"):
                        floats = [attr.f] if attr.name == "value_float" else list(attr.floats)
                        array = np.array(floats if attr.name == "value_floats" else floats[0], np.float32)
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
                elif attr.type == onnx.AttributeProto.GRAPH:
                    convert(attr.g)
                elif attr.type == onnx.AttributeProto.GRAPHS:
                    for sub in attr.graphs:
                        convert(sub)
        for value in list(graph.input) + list(graph.output):
            if value.type.tensor_type.elem_type == TensorProto.FLOAT:
                value.type.tensor_type.elem_type = TensorProto.FLOAT16
        del graph.value_info[:]

    convert(model.graph)
    if any(f.domain == contract.DOMAIN and f.name == contract.DECODE_OP for f in model.functions):
        kept = [f for f in model.functions if f.domain != contract.DOMAIN]
        opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
        del model.functions[:]
        model.functions.extend(kept + [decode_function(opset, "float16")])
    return model
