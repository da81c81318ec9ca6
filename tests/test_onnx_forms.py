"""The ONNX forms real exporters write, each quantised (or skipped with its reason) by the whole
export: weights as Constant nodes (paddle2onnx), Transpose -> MatMul, Gemm with transB either
way, one weight shared by several nodes, external data (and the > 2 GB path), linears inside
If / Loop bodies, and layer names from the module paths the file records.

Every bundle is checked against the fp32 graph holding the same dequantised weights, at the
parity bound of docs/ONNX.md (max|diff| <= 1e-4 max|ref|: the same bits and scales in fp32,
only the summation order differs), by the export's own parity check and here in ONNX Runtime."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from bqq_deploy.config import BQQConfig
from bqq_deploy.export import ExportOptions, export_bundle, forms, load_model, surgery
from bqq_deploy.format import load_layers

CONFIG = BQQConfig(bits=2, group_size=16, steps=0)
PARITY = 1e-4


def _model(nodes, inits, inputs, outputs, opset=17, functions=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs,
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                             functions=list(functions))


def _io(name, shape, dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


def _const(name, array):
    return helper.make_node("Constant", [], [name], name=f"{name}_const",
                            value=numpy_helper.from_array(array, name))


def _export(tmp_path, model, name="m", **options):
    path = tmp_path / f"{name}.onnx"
    onnx.save(model, str(path))
    out = tmp_path / f"{name}_bundle"
    report = export_bundle(load_model(path), out, ExportOptions(
        config=CONFIG, progress=False, bench_iters=0, **options))
    return report, out


def _run(path, feeds):
    from bqq_deploy import runtime  # a bundle's model.onnx reads its weights from the bundle

    backend = runtime.load(path, backend="onnxruntime", providers=["CPUExecutionProvider"])
    return list(backend.run(feeds).values())


def _assert_parity(report):
    parity = report.validation["vs_bqq_reference"]
    assert parity["passed"], parity["failures"]
    assert all(o["max_rel"] <= PARITY for o in parity["outputs"])


def _rng_weights(*shapes, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal(s) / np.sqrt(s[0])).astype(np.float32) for s in shapes]


def paddle_style_model() -> onnx.ModelProto:
    """What paddle2onnx writes for a small MLP head: every parameter a Constant node named
    after the Paddle parameter (`linear_0.w_0`, stored [in, out]), matmul_v2 as MatMul and
    elementwise_add as Add, a dynamic batch named p2o.DynamicDimension.0, opset 11."""
    w0, w1 = _rng_weights((48, 64), (64, 32))
    b0 = np.random.default_rng(1).standard_normal(64).astype(np.float32)
    nodes = [_const("linear_0.w_0", w0), _const("linear_0.b_0", b0), _const("linear_1.w_0", w1),
             helper.make_node("MatMul", ["x", "linear_0.w_0"], ["t0"], name="p2o.MatMul.0"),
             helper.make_node("Add", ["t0", "linear_0.b_0"], ["t1"], name="p2o.Add.0"),
             helper.make_node("Relu", ["t1"], ["t2"], name="p2o.Relu.0"),
             helper.make_node("MatMul", ["t2", "linear_1.w_0"], ["y"], name="p2o.MatMul.1")]
    return _model(nodes, {}, [_io("x", ["p2o.DynamicDimension.0", 48])],
                  [_io("y", ["p2o.DynamicDimension.0", 32])], opset=11)


def test_constant_node_weights_are_quantised(tmp_path):
    model = paddle_style_model()
    report, out = _export(tmp_path, model)
    assert {(l.layer, l.onnx_node, l.bias_node) for l in report.layers} == {
        ("linear_0.w_0", "p2o.MatMul.0", "p2o.Add.0"), ("linear_1.w_0", "p2o.MatMul.1", None)}
    _assert_parity(report)
    trt = onnx.load(str(out / "model.trt.onnx"))
    assert not [n for n in trt.graph.node if n.op_type in ("MatMul", "Constant")]
    assert sorted(load_layers(out / "layers.bqq.safetensors")) == ["linear_0.w_0", "linear_1.w_0"]


def test_transpose_matmul_and_gemm_trans_b_both_ways(tmp_path):
    # x -> MatMul(Transpose(W0)) -> Gemm(W1^T stored, transB=0) -> Gemm(W2 stored, transB=1)
    w0, w1t, w2 = _rng_weights((32, 48), (32, 40), (24, 40))
    nodes = [helper.make_node("Transpose", ["w0"], ["w0t"], name="t", perm=[1, 0]),
             helper.make_node("MatMul", ["x", "w0t"], ["h0"], name="fc0"),
             helper.make_node("Gemm", ["h0", "w1t"], ["h1"], name="fc1", transB=0),
             helper.make_node("Gemm", ["h1", "w2"], ["y"], name="fc2", transB=1)]
    model = _model(nodes, {"w0": w0, "w1t": w1t, "w2": w2}, [_io("x", ["n", 48])], [_io("y", ["n", 24])])
    report, out = _export(tmp_path, model)
    shapes = {l.onnx_node: l.shape for l in report.layers}
    assert shapes == {"fc0": [32, 48], "fc1": [40, 32], "fc2": [24, 40]}  # every W as [out, in]
    _assert_parity(report)
    # the folded weight is W0 itself: the quantised layer approximates it, not its transpose
    layers = load_layers(out / "layers.bqq.safetensors")
    w_hat = layers["w0"].dequantize().numpy()
    assert np.mean((w_hat - w0) ** 2) < np.mean(w0 ** 2)
    assert not [n for n in onnx.load(str(out / "model.trt.onnx")).graph.node if n.op_type == "Transpose"]


def test_a_weight_shared_by_two_linears_is_one_layer(tmp_path):
    # W read by two MatMuls (tied weights, or equal tensors an exporter merged): one BQQ
    # weight, two BQQMatMul nodes reading the same initializers.
    (w,) = _rng_weights((32, 32))
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="first"),
             helper.make_node("Tanh", ["h"], ["t"], name="act"),
             helper.make_node("MatMul", ["t", "w"], ["y"], name="second")]
    model = _model(nodes, {"w": w}, [_io("x", ["n", 32])], [_io("y", ["n", 32])])
    rng = np.random.default_rng(3)
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=rng.standard_normal((40, 32)).astype(np.float32))
    report, out = _export(tmp_path, model, calib=calib)
    (layer,) = report.layers
    assert (layer.layer, layer.onnx_node, layer.shared_nodes) == ("w", "first", ["second"])
    _assert_parity(report)
    bqq = onnx.load(str(out / "model.trt.onnx"))
    nodes = [n for n in bqq.graph.node if n.op_type == "BQQMatMul"]
    assert [n.name for n in nodes] == ["w.BQQMatMul", "w.BQQMatMul.1"]
    assert nodes[0].input[1:4] == nodes[1].input[1:4]  # the same packed tensors
    assert sum(i.name == "w.bqq.y_bits" for i in bqq.graph.initializer) == 1
    # calibration saw the rows of both uses: 32 held-in samples x 2 nodes
    assert report.calibration["samples"] == 32


def test_a_weight_tied_to_an_embedding_stays_in_float_with_its_reason(tmp_path):
    (table,) = _rng_weights((50, 16))
    nodes = [helper.make_node("Gather", ["table", "ids"], ["e"], name="embed"),
             helper.make_node("Gemm", ["e", "table"], ["y"], name="lm_head", transB=1),
             helper.make_node("MatMul", ["e", "w"], ["z"], name="proj")]
    (w,) = _rng_weights((16, 24), seed=1)
    model = _model(nodes, {"table": table, "w": w}, [_io("ids", ["n"], TensorProto.INT64)],
                   [_io("y", ["n", 50]), _io("z", ["n", 24])])
    report, _ = _export(tmp_path, model)
    assert [l.onnx_node for l in report.layers] == ["proj"]
    reasons = {s.onnx_node: s.reason for s in report.skipped}  # the table is not packed either
    assert set(reasons) == {"lm_head", "embed"} and "also feeds Gather node embed" in reasons["lm_head"]
    # integer inputs are never invented for accuracy: parity only, and the report says so
    assert report.validation["inputs"]["source"] == "none" and "vs_original" not in report.validation
    assert report.verdict["note"].startswith("no real inputs: parity with the dequantised model only")


def test_weights_in_external_data_and_the_large_model_path(tmp_path, monkeypatch):
    model = forms.normalize(paddle_style_model())  # weights as initializers
    src = tmp_path / "ext"
    src.mkdir()
    onnx.save(model, str(src / "m.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
              location="m.onnx.data", size_threshold=0)
    assert (src / "m.onnx.data").stat().st_size > 10_000  # the weights really are outside
    assert (src / "m.onnx").stat().st_size < 2_000
    # Past 2 GB nothing may go through protobuf serialisation: make every model "large" so the
    # same code paths (external data for every file written and every ONNX Runtime session)
    # run on this small one.
    monkeypatch.setattr(forms, "INLINE_LIMIT", 1024)
    out = tmp_path / "bundle"
    report = export_bundle(load_model(src / "m.onnx"), out, ExportOptions(
        config=CONFIG, progress=False, bench_iters=0))
    assert len(report.layers) == 2
    _assert_parity(report)
    for name in ("model.onnx", "model.trt.onnx", "model.trt.fp16.onnx"):
        onnx.checker.check_model(str(out / name), full_check=True)  # weights read from beside it
    x = np.random.default_rng(0).standard_normal((3, 48)).astype(np.float32)
    from bqq_deploy import runtime

    assert runtime.load(out / "model.onnx").run({"x": x})["y"].shape == (3, 32)


def _if_model():
    """x -> fc (MatMul) -> If(cond): then MatMul(h, w_then) else Identity(h)."""
    w_main, w_then = _rng_weights((32, 32), (32, 32), seed=4)
    then_graph = helper.make_graph(
        [helper.make_node("MatMul", ["h", "w_then"], ["out_then"], name="inner_fc")], "then", [],
        [_io("out_then", ["n", 32])])
    else_graph = helper.make_graph(
        [helper.make_node("Identity", ["h"], ["out_else"], name="pass")], "else", [],
        [_io("out_else", ["n", 32])])
    nodes = [helper.make_node("MatMul", ["x", "w_main"], ["h"], name="fc"),
             helper.make_node("If", ["cond"], ["y"], name="branch", then_branch=then_graph,
                              else_branch=else_graph)]
    return _model(nodes, {"w_main": w_main, "w_then": w_then},
                  [_io("x", ["n", 32]), _io("cond", [], TensorProto.BOOL)], [_io("y", ["n", 32])])


def _loop_model():
    """x -> Loop(trip count 2): h = MatMul(h, w_loop) -> fc_out (MatMul)."""
    w_loop, w_out = _rng_weights((16, 16), (16, 16), seed=5)
    body = helper.make_graph(
        [helper.make_node("MatMul", ["h_in", "w_loop"], ["h_out"], name="loop_fc"),
         helper.make_node("Identity", ["cond_in"], ["cond_out"])], "body",
        [_io("i", [], TensorProto.INT64), _io("cond_in", [], TensorProto.BOOL), _io("h_in", ["n", 16])],
        [_io("cond_out", [], TensorProto.BOOL), _io("h_out", ["n", 16])])
    nodes = [helper.make_node("Constant", [], ["trips"], value=numpy_helper.from_array(np.array(2, np.int64))),
             helper.make_node("Constant", [], ["true"], value=numpy_helper.from_array(np.array(True))),
             helper.make_node("Loop", ["trips", "true", "x"], ["h"], name="loop", body=body),
             helper.make_node("MatMul", ["h", "w_out"], ["y"], name="fc_out")]
    return _model(nodes, {"w_loop": w_loop, "w_out": w_out}, [_io("x", ["n", 16])], [_io("y", ["n", 16])])


@pytest.mark.parametrize("make, inner, outer, where", [
    (_if_model, "inner_fc", "fc", "If node branch, then_branch"),
    (_loop_model, "loop_fc", "fc_out", "Loop node loop, body"),
])
def test_linears_in_subgraphs_are_skipped_with_a_named_reason(tmp_path, make, inner, outer, where):
    model = make()
    feeds = {"x": np.random.default_rng(0).standard_normal((2, model.graph.input[0].type.tensor_type
                                                             .shape.dim[1].dim_value)).astype(np.float32)}
    if len(model.graph.input) > 1:
        feeds["cond"] = np.array(True)  # the branch with the float linear runs
    report, out = _export(tmp_path, model)
    assert [l.onnx_node for l in report.layers] == [outer]
    (skipped,) = report.skipped
    assert skipped.onnx_node == inner and f"inside the {where}" in skipped.reason
    assert "not rewritten" in skipped.reason
    _assert_parity(report)
    (y,) = _run(out / "model.onnx", feeds)
    assert y.shape == feeds["x"].shape and np.isfinite(y).all()


def test_layer_names_are_the_module_paths_the_file_records(tmp_path):
    # The TorchScript-based exporter writes the module path into node names; the
    # torch.export-based one into node metadata (node names are node_MatMul_N, weights val_N).
    w0, w1 = _rng_weights((32, 32), (32, 16))
    scoped = helper.make_node("MatMul", ["h", "val_7"], ["y"], name="node_MatMul_3")
    scoped.metadata_props.add(key=forms.NAME_SCOPES,
                              value="['', 'encoder', 'encoder.layer.0', 'encoder.layer.0.out', 'linear']")
    nodes = [helper.make_node("MatMul", ["x", "onnx::MatMul_12"], ["h"], name="/encoder/layer.0/fc/MatMul"),
             scoped]
    model = _model(nodes, {"onnx::MatMul_12": w0, "val_7": w1}, [_io("x", ["n", 32])], [_io("y", ["n", 16])])
    assert [forms.module_path(n) for n in model.graph.node] == ["encoder.layer.0.fc", "encoder.layer.0.out"]
    report, out = _export(tmp_path, model)
    assert sorted(l.layer for l in report.layers) == ["encoder.layer.0.fc", "encoder.layer.0.out"]
    names = {n.name for n in onnx.load(str(out / "model.trt.onnx")).graph.node}
    assert names == {"encoder.layer.0.fc.BQQMatMul", "encoder.layer.0.out.BQQMatMul"}
    # --exclude takes the module path
    report, _ = _export(tmp_path, model, name="excl", exclude=("encoder.layer.0.out",))
    assert [l.layer for l in report.layers] == ["encoder.layer.0.fc"]
    assert report.skipped[0].reason == "--exclude encoder.layer.0.out"


def test_normalize_keeps_values_subgraphs_and_outputs_read():
    # An Identity whose output is a graph output, and a Constant a subgraph captures, keep
    # their names; a Transpose whose weight has another reader is not folded into it: when it
    # feeds a linear's weight (a tied LM head) the linear gets a transposed copy, otherwise
    # it stays.
    (w,) = _rng_weights((8, 8))
    x = np.eye(8, dtype=np.float32)
    for reader, kept in (("MatMul", ["Identity", "MatMul"]), ("Add", ["Identity", "Transpose", "Add"])):
        nodes = [helper.make_node("Identity", ["w"], ["w_out"], name="id"),
                 helper.make_node("Transpose", ["w"], ["wt"], name="t", perm=[1, 0]),
                 helper.make_node(reader, ["x", "wt"], ["y"], name="mm")]
        model = _model(nodes, {"w": w}, [_io("x", ["n", 8])], [_io("y", ["n", 8]), _io("w_out", [8, 8])])
        normal = forms.normalize(model)
        assert [n.op_type for n in normal.graph.node] == kept
        inits = {i.name: numpy_helper.to_array(i) for i in normal.graph.initializer}
        np.testing.assert_array_equal(inits["w"], w)
        assert reader != "MatMul" or np.array_equal(inits["wt"], w.T)
        for got, want in zip(_run_model(normal, {"x": x}), _run_model(model, {"x": x})):
            np.testing.assert_array_equal(got, want)


def _run_model(model, feeds):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)


def test_find_candidates_on_the_raw_forms_names_what_normalize_fixes():
    # Without normalize, a Constant weight is not an initializer: nothing to quantise. The
    # pipeline always normalises first (fp32_onnx).
    model = surgery.name_nodes(paddle_style_model())
    assert surgery.find_candidates(model)[0] == []
    found, _ = surgery.find_candidates(surgery.name_nodes(forms.normalize(paddle_style_model())))
    assert [c.layer for c in found] == ["linear_0.w_0", "linear_1.w_0"]
    assert json.dumps([c.names for c in found])  # plain strings, usable in reports
