"""The forms in which real exporters write a linear layer's weight, brought to the one form
graph surgery reads (a float initializer feeding MatMul / Gemm), and the names they record
for the layer. Done once on the fp32 graph, before candidates are searched:

- paddle2onnx (and some TensorFlow converters) store weights as `Constant` nodes;
- torch.onnx shares equal tensors through `Identity` nodes;
- a weight kept as [out, in] is read through `Transpose(perm=[1, 0])`;
- torch's exporters record the module path of each node: the TorchScript-based one in the
  node name (`/encoder/layer.0/attention/self/query/MatMul`), the torch.export-based one in
  node metadata (`pkg.torch.onnx.name_scopes`), where node names are `node_MatMul_12`.
"""

from __future__ import annotations

import ast
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import onnx

from ..tensors import TensorFiles, assign, external_entry, values

# Node metadata key in which torch's torch.export-based exporter lists a node's module scopes.
NAME_SCOPES = "pkg.torch.onnx.name_scopes"


# Protobuf cannot serialise a message of 2 GiB or more: models past this size (less a margin
# for the graph itself) are written with their tensors in an external data file.
INLINE_LIMIT = 2**31 - 2**26


def copy_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """A deep copy that does not serialise (so it works past protobuf's 2 GB limit)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy


def is_large(model: onnx.ModelProto) -> bool:
    return model.ByteSize() >= INLINE_LIMIT


def check(model: onnx.ModelProto, path=None, *, full_check: bool = False,
          data: TensorFiles | None = None) -> None:
    """onnx.checker on model, through its file (path) when it is too large to serialise or
    reads external data, or (data: its external tensors are there) a file beside them."""
    external = any(external_entry(t) for t in model.graph.initializer)
    if data is not None:
        with data.session_path(model, "check") as saved:
            onnx.checker.check_model(saved, full_check=full_check)
    elif (is_large(model) or external) and path is not None:
        onnx.checker.check_model(str(path), full_check=full_check)
    elif not is_large(model):
        onnx.checker.check_model(model, full_check=full_check)


@contextmanager
def session_path(model: onnx.ModelProto, data: TensorFiles | None = None) -> Iterator[str | bytes]:
    """What onnxruntime.InferenceSession takes for model: a file beside the tensors of data
    (tensors.TensorFiles), else its bytes, or past INLINE_LIMIT the path of a temporary copy
    with external data."""
    if data is not None:
        with data.session_path(model) as path:
            yield path
    elif not is_large(model):
        yield model.SerializeToString()
    else:
        with tempfile.TemporaryDirectory(prefix="bqq-large-") as scratch:
            path = Path(scratch) / "model.onnx"
            onnx.save(copy_model(model), str(path), save_as_external_data=True,
                      all_tensors_to_one_file=True, location="model.onnx.data", size_threshold=1024)
            yield str(path)


def subgraph_names(graph: onnx.GraphProto) -> set[str]:
    """Every value name read inside the subgraphs (If / Loop / Scan bodies) of graph's nodes,
    at any depth: outer values they capture must keep their names."""
    names: set[str] = set()
    for node in graph.node:
        for attr in node.attribute:
            for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else
                        list(attr.graphs) if attr.type == onnx.AttributeProto.GRAPHS else []):
                names |= {i for n in sub.node for i in n.input} | subgraph_names(sub)
    return names


def normalize(model: onnx.ModelProto, data: TensorFiles | None = None) -> onnx.ModelProto:
    """A copy of model where float `Constant` nodes are initializers, `Identity` of an
    initializer is read as the initializer itself, `Transpose(perm=[1, 0])` of a 2-D float
    initializer that nothing else reads is folded into it (the initializer keeps its name and
    holds the transposed values), one whose initializer is read elsewhere too but that feeds
    only linears' weights becomes a transposed copy (named like the Transpose's output), and
    each linear's bias is its own tensor. Only the main graph is rewritten; values that
    subgraphs or graph outputs read keep their producers."""
    model = copy_model(model)
    graph = model.graph
    keep = subgraph_names(graph) | {o.name for o in graph.output}
    inits = {init.name: init for init in graph.initializer}

    nodes = []
    for node in graph.node:
        value = _constant_tensor(node)
        if value is not None and node.output[0] not in inits:
            value.name = node.output[0]
            graph.initializer.append(value)
            inits[value.name] = graph.initializer[-1]
            continue
        nodes.append(node)

    renames: dict[str, str] = {}
    kept = []
    for node in nodes:
        if (node.op_type == "Identity" and node.input[0] in inits
                and node.output[0] not in keep and node.output[0] not in inits):
            renames[node.output[0]] = node.input[0]
            continue
        kept.append(node)
    _rename_inputs(kept, renames)

    readers: dict[str, list] = {}
    for node in kept:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    renames = {}
    nodes = []
    for node in kept:
        source = node.input[0] if node.op_type == "Transpose" and node.input else None
        init = inits.get(source) if source else None
        if not (init is not None and init.data_type == onnx.TensorProto.FLOAT and len(init.dims) == 2
                and _perm(node) in (None, [1, 0]) and node.output[0] not in keep):
            nodes.append(node)
        elif len(readers[source]) == 1 and source not in keep:
            assign(init, values(init, data).T, data)
            renames[node.output[0]] = source
        elif all(r.op_type in ("MatMul", "Gemm") and list(r.input).index(node.output[0]) == 1
                 and node.output[0] not in r.input[2:] for r in readers.get(node.output[0], [])):
            # W read as it is (an embedding table) and, transposed, as a linear's weight (a
            # tied LM head): the linear gets a transposed copy, so each use can be quantised.
            assign(graph.initializer.add(), values(init, data).T, data, node.output[0])
            inits[node.output[0]] = graph.initializer[-1]
        else:
            nodes.append(node)
    _rename_inputs(nodes, renames)
    _unshare_biases(graph, nodes, inits, keep)
    del graph.node[:]
    graph.node.extend(nodes)
    return model


def _unshare_biases(graph: onnx.GraphProto, nodes, inits: dict, keep: set[str]) -> None:
    """Give a bias read by several nodes one copy per linear that adds it (a Gemm's C, or the
    Add right after a MatMul with a constant weight): exporters merge equal tensors (zero
    biases of a fresh model, equal LayerNorm shifts), and a bias folded into a BQQMatMul (and
    corrected by calibration) must be that layer's own. Copies cost M floats each."""
    readers: dict[str, int] = {}
    for node in nodes:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    linear_outputs = {n.output[0] for n in nodes if n.op_type == "MatMul" and len(n.input) > 1
                      and n.input[1] in inits}
    for node in nodes:
        if node.op_type == "Gemm" and len(node.input) > 2:
            slots = [2]
        elif node.op_type == "Add" and len(node.input) == 2 and (
                node.input[0] in linear_outputs or node.input[1] in linear_outputs):
            slots = [i for i in (0, 1) if node.input[i] not in linear_outputs]
        else:
            continue
        for slot in slots:
            name = node.input[slot]
            init = inits.get(name)
            if init is None or readers.get(name, 0) < 2 or name in keep or len(init.dims) > 2:
                continue
            copy = onnx.TensorProto()
            copy.CopyFrom(init)
            copy.name = f"{name}.{node.name or node.output[0]}"
            graph.initializer.append(copy)
            inits[copy.name] = graph.initializer[-1]
            node.input[slot] = copy.name
            readers[name] -= 1


def _constant_tensor(node: onnx.NodeProto) -> onnx.TensorProto | None:
    """The value of a Constant node holding a float tensor (a weight), else None."""
    if node.op_type != "Constant" or node.domain not in ("", "ai.onnx"):
        return None
    for attr in node.attribute:
        if attr.name == "value" and attr.type == onnx.AttributeProto.TENSOR:
            if attr.t.data_type == onnx.TensorProto.FLOAT and len(attr.t.dims) >= 1:
                tensor = onnx.TensorProto()
                tensor.CopyFrom(attr.t)
                return tensor
    return None


def _perm(node: onnx.NodeProto) -> list[int] | None:
    for attr in node.attribute:
        if attr.name == "perm":
            return list(attr.ints)
    return None


def _rename_inputs(nodes, renames: dict[str, str]) -> None:
    if not renames:
        return
    for node in nodes:
        for i, name in enumerate(node.input):
            while name in renames:
                name = renames[name]
            node.input[i] = name


def module_path(node: onnx.NodeProto) -> str | None:
    """The torch module path the exporter recorded for node, or None: from the
    torch.export-based exporter's name scopes (the entry before the op's own name), else
    from a TorchScript-exporter node name `/a/b.0/c/MatMul` -> `a.b.0.c`."""
    for prop in node.metadata_props:
        if prop.key == NAME_SCOPES:
            try:
                scopes = ast.literal_eval(prop.value)
            except (ValueError, SyntaxError):
                break
            if isinstance(scopes, list) and len(scopes) >= 2 and str(scopes[-2]):
                return str(scopes[-2])
    parts = node.name.split("/")
    if node.name.startswith("/") and len(parts) >= 3 and all(parts[1:-1]):
        return ".".join(parts[1:-1])
    return None
