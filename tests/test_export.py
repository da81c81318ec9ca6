"""bqq_deploy.export: the BQQMatMul function and plugin forms, graph surgery, parity of the
portable file in ONNX Runtime with the PyTorch BQQ model, the ONNX-file path and calibration.

Parity tolerance: the portable function and the reference use the same bits and the same
fp16 scales widened to fp32; they differ only in floating-point summation order (W_hat built
then multiplied, vs torch's matmul with the dequantised weight), i.e. errors of order
1e-7 relative per layer. 1e-4 of max |reference| leaves room for a few transformer layers
of accumulation while still catching any wrong bit, scale or layout (those give O(1) errors)."""

from __future__ import annotations

import collections
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from bqq_deploy.config import BQQConfig
from bqq_deploy.export import load_model
from bqq_deploy.export import surgery
from bqq_deploy.export import ExportOptions
from bqq_deploy.contract import DECODE_OP, DOMAIN, MATMUL
from bqq_deploy.export.function import decode_function, node_attributes
from bqq_deploy.export.loaders import SourceModel
from bqq_deploy.export.pipeline import export_bundle, fp32_onnx
from bqq_deploy.specs import TensorSpec, sample_inputs
from bqq_deploy.export.torch_map import dequantised, match_parameters
from bqq_deploy.format import unpack_bits
from bqq_deploy.models import DigitsViT
from bqq_deploy.nn import reference_matmul

PARITY = 1e-4


def ort_run(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def rel_err(out: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(out - ref).max() / np.abs(ref).max())


def tiny_vit_file(tmp_path, seed: int = 0):
    """A small DigitsViT as TorchScript with a JSON sidecar, like models/digits_vit.pt."""
    torch.manual_seed(seed)
    model = DigitsViT(dim=32, depth=1, heads=2, mlp_ratio=2).eval()
    with torch.no_grad():  # trained models have biases; the fresh init's zeros would fold away
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                module.bias.normal_(0.0, 0.02)
    path = tmp_path / "tiny_vit.pt"
    torch.jit.script(model).save(str(path))
    path.with_suffix(".json").write_text(json.dumps(
        {"input": {"name": "image", "shape": ["batch", 1, 8, 8], "dtype": "float32"},
         "output": {"name": "logits", "shape": ["batch", 10], "dtype": "float32"}}))
    return path


def random_weights(candidates, make_weight, group: int = 16, rank: int = 8, stacks: int = 2):
    return {c.layer: make_weight(c.shape[0], c.shape[1], group, group, rank, stacks,
                                 bias=c.bias is not None, seed=i)
            for i, c in enumerate(candidates)}


def prepared(source: SourceModel):
    fp32 = fp32_onnx(source)
    candidates, _ = surgery.find_candidates(fp32)
    matches = match_parameters(source.module, candidates)
    for cand in candidates:
        cand.layer = matches[cand.node].weight
    return fp32, candidates, matches


# ---------------------------------------------------------------------------------------
# the node contract


@pytest.mark.parametrize("shape", [(70, 100, 32, 16, 24, 2), (10, 64, 64, 64, 40, 3),
                                   (33, 17, 8, 16, 5, 1)])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_decode_function_rebuilds_the_dequantised_weight(make_weight, shape, dtype):
    M, K, g_r, g_c, rank, p = shape
    w = make_weight(M, K, g_r, g_c, rank, p)
    out = helper.make_tensor_value_info("w", TensorProto.FLOAT if dtype == "float32"
                                        else TensorProto.FLOAT16, [M, K])
    inits = [numpy_helper.from_array(w.y_bits.numpy(), "yb"),
             numpy_helper.from_array(w.z_bits.numpy(), "zb"),
             numpy_helper.from_array(w.scales.numpy(), "sc")]
    node = helper.make_node(DECODE_OP, ["yb", "zb", "sc"], ["w"], domain=DOMAIN, **node_attributes(w))
    model = helper.make_model(helper.make_graph([node], "g", [], [out], inits),
                              opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(DOMAIN, 1)],
                              functions=[decode_function(18, dtype)])
    onnx.checker.check_model(model, full_check=True)
    (decoded,) = ort_run(model, {})
    ref = w.dequantize().numpy()
    # fp32: the same products and sums as BQQWeight.dequantize, summation order aside; fp16:
    # one rounding of the fp32 result (relative 2^-11).
    tol = 1e-6 if dtype == "float32" else 2 ** -11
    assert decoded.dtype == np.dtype(dtype) and decoded.shape == (M, K)
    assert np.abs(decoded.astype(np.float32) - ref).max() <= tol * np.abs(ref).max()


# ---------------------------------------------------------------------------------------
# torch models: parity of the portable file with the PyTorch BQQ model


def test_digits_vit_portable_matches_pytorch_bqq_model(tmp_path, make_weight):
    source = load_model(tiny_vit_file(tmp_path))
    fp32, candidates, matches = prepared(source)
    linears = [n for n, m in source.module.named_modules() if m.original_name == "Linear"]
    assert sorted(c.layer for c in candidates) == sorted(f"{n}.weight" for n in linears)
    weights = random_weights(candidates, make_weight)
    portable = surgery.replace_with_bqq(fp32, candidates, weights, surgery.PORTABLE)
    onnx.checker.check_model(portable, full_check=True)
    feeds = sample_inputs(source.inputs, seed=1)
    (out,) = ort_run(portable, feeds)
    before = {name: t.clone() for name, t in source.module.state_dict().items()}
    with dequantised(source.module, candidates, weights, matches) as reference, torch.no_grad():
        ref = reference(torch.from_numpy(feeds["image"])).numpy()
    assert rel_err(out, ref) <= PARITY
    # the module's own weights are back, bit for bit
    assert all(torch.equal(before[name], t) for name, t in source.module.state_dict().items())
    # the quantised model really differs from the original (weights were replaced)
    (orig,) = ort_run(fp32, feeds)
    assert rel_err(orig, ref) > 1e-2


def transformer_encoder(seed: int) -> torch.nn.TransformerEncoder:
    """Two encoder layers with distinct random weights (TransformerEncoder clones one layer,
    and the exporter would merge identical weights into one shared initializer)."""
    torch.manual_seed(seed)
    layer = torch.nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
    module = torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).eval()
    with torch.no_grad():
        for param in module.parameters():
            param.normal_(0.0, 0.2)
    return module


def test_transformer_encoder_mha_and_ffn_are_quantised(make_weight):
    source = SourceModel(path=None, kind="pickle", module=transformer_encoder(0),
                         inputs=[TensorSpec("src", ("batch", 5, 32))], output_names=["out"])
    fp32, candidates, matches = prepared(source)
    layers = sorted(c.layer for c in candidates)
    expected = sorted(f"layers.{i}.{n}" for i in range(2) for n in (
        "self_attn.in_proj_weight", "self_attn.out_proj.weight", "linear1.weight", "linear2.weight"))
    assert layers == expected
    assert {c.op_type for c in candidates} == {"MatMul", "Gemm"}
    weights = random_weights(candidates, make_weight, group=16, rank=8, stacks=3)
    portable = surgery.replace_with_bqq(fp32, candidates, weights, surgery.PORTABLE)
    onnx.checker.check_model(portable, full_check=True)
    feeds = sample_inputs(source.inputs, seed=3)
    (out,) = ort_run(portable, feeds)
    with dequantised(transformer_encoder(0), candidates, weights, matches) as reference, torch.no_grad():
        ref = reference(torch.from_numpy(feeds["src"])).numpy()
    assert rel_err(out, ref) <= PARITY
    # the ONNX-side reference (weights substituted in the graph) agrees as well
    (onnx_ref,) = ort_run(surgery.with_weights(fp32, candidates, weights), feeds)
    assert rel_err(out, onnx_ref) <= PARITY


# ---------------------------------------------------------------------------------------
# TensorRT forms


def test_tensorrt_forms_carry_plugin_nodes_only(tmp_path, make_weight):
    source = load_model(tiny_vit_file(tmp_path))
    fp32, candidates, _ = prepared(source)
    weights = random_weights(candidates, make_weight)
    trt = surgery.replace_with_bqq(fp32, candidates, weights, surgery.TENSORRT)
    trt16 = surgery.to_fp16(trt)
    for model in (trt, trt16):
        onnx.checker.check_model(model, full_check=True)
        assert len(model.functions) == 0
        assert {(o.domain, o.version) for o in model.opset_import} >= {(DOMAIN, 1)}
        inits = {i.name: i for i in model.graph.initializer}
        assert not {c.weight_name for c in candidates} & set(inits)  # float weights left
        plugin_nodes = [n for n in model.graph.node if n.op_type == MATMUL.op_type]
        assert sorted(n.name for n in plugin_nodes) == sorted(f"{c.layer}.{MATMUL.op_type}" for c in candidates)
        assert not [n for n in model.graph.node if n.op_type in ("Gemm",)]  # the head's Gemm too
        for node, cand in zip(sorted(plugin_nodes, key=lambda n: n.name),
                              sorted(candidates, key=lambda c: f"{c.layer}.{MATMUL.op_type}")):
            w = weights[cand.layer]
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            assert node.domain == DOMAIN
            assert attrs == {"out_features": w.out_features, "in_features": w.in_features,
                             "group_rows": 16, "group_cols": 16, "rank": 8, "stacks": 2,
                             "format_version": 1, "plugin_version": b"1", "plugin_namespace": b"bqq"}
            assert all(a.type == onnx.AttributeProto.INT for a in node.attribute
                       if a.name in MATMUL.int_attributes)
            yb, zb, sc = (inits[name] for name in node.input[1:4])
            assert yb.name == f"{cand.layer}.bqq.y_bits" and zb.name == f"{cand.layer}.bqq.z_bits"
            # The packed words as they are (INT32 [..., L]), per the contract.
            assert yb.data_type == zb.data_type == TensorProto.INT32
            np.testing.assert_array_equal(numpy_helper.to_array(yb), w.y_bits.numpy())
            assert list(yb.dims) == [2, *w.grid, 16, 1] and list(zb.dims) == [2, *w.grid, 16, 1]
            assert sc.data_type == TensorProto.FLOAT16 and list(sc.dims) == [2, *w.grid, 4]
            assert len(node.input) == 5  # every layer of the ViT has a bias
    float_types = {TensorProto.FLOAT, TensorProto.FLOAT16}
    for model, want in ((trt, TensorProto.FLOAT), (trt16, TensorProto.FLOAT16)):
        io = list(model.graph.input) + list(model.graph.output)
        assert {v.type.tensor_type.elem_type for v in io} == {want}
        types = {i.data_type for i in model.graph.initializer} & float_types
        if want == TensorProto.FLOAT16:
            assert types == {TensorProto.FLOAT16}  # scales were fp16 already; the rest cast
        else:
            assert TensorProto.FLOAT in types
        biases = [i for i in model.graph.initializer if i.name.endswith(".bqq.bias")]
        assert biases and all(b.data_type == want for b in biases)


def test_fp16_graph_computes_the_same_model(tmp_path, make_weight):
    """to_fp16 only changes dtypes: the fp16 portable graph agrees with the fp32 one to fp16
    precision (about 1e-3 relative per op; 2e-2 allows a transformer block's accumulation)."""
    source = load_model(tiny_vit_file(tmp_path))
    fp32, candidates, _ = prepared(source)
    portable = surgery.replace_with_bqq(fp32, candidates, random_weights(candidates, make_weight),
                                        surgery.PORTABLE)
    half = surgery.to_fp16(portable)
    onnx.checker.check_model(half, full_check=True)
    feeds = sample_inputs(source.inputs, seed=2)
    (out32,) = ort_run(portable, feeds)
    (out16,) = ort_run(half, {"image": feeds["image"].astype(np.float16)})
    assert out16.dtype == np.float16
    assert rel_err(out16.astype(np.float32), out32) <= 2e-2


# ---------------------------------------------------------------------------------------
# ONNX files in, and calibration (real solver, few steps)


def linear_onnx(path, seed: int = 0, K: int = 48, M: int = 40):
    """x -> MatMul(W1^T)+b1 -> Relu -> Gemm(transB, W2, b2) -> MatMul(W3^T) (no bias)."""
    rng = np.random.default_rng(seed)
    w1, b1 = rng.standard_normal((M, K)).astype(np.float32) / 7, rng.standard_normal(M).astype(np.float32)
    w2, b2 = rng.standard_normal((M, M)).astype(np.float32) / 6, rng.standard_normal(M).astype(np.float32)
    w3 = rng.standard_normal((M, 16)).astype(np.float32) / 6
    nodes = [helper.make_node("MatMul", ["x", "w1t"], ["h1"], name="fc1"),
             helper.make_node("Add", ["h1", "b1"], ["h1b"], name="fc1_bias"),
             helper.make_node("Relu", ["h1b"], ["r1"], name="relu"),
             helper.make_node("Gemm", ["r1", "w2", "b2"], ["h2"], name="fc2", transB=1),
             helper.make_node("MatMul", ["h2", "w3"], ["y"], name="fc3")]
    inits = [numpy_helper.from_array(w1.T.copy(), "w1t"), numpy_helper.from_array(b1, "b1"),
             numpy_helper.from_array(w2, "w2"), numpy_helper.from_array(b2, "b2"),
             numpy_helper.from_array(w3, "w3")]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", K])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 16])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))
    return model


def test_onnx_file_path_needs_no_torch_model(tmp_path):
    path = tmp_path / "mlp.onnx"
    linear_onnx(path)
    source = load_model(path)
    assert source.kind == "onnx" and source.module is None
    assert source.inputs == [TensorSpec("x", ("n", 48), "float32")]
    out = tmp_path / "bundle"
    report = export_bundle(source, out, ExportOptions(
        config=BQQConfig(bits=2, group_size=16, steps=0), progress=False, bench_iters=2)).to_dict()
    assert sorted(l["layer"] for l in report["layers"]) == ["w1t", "w2", "w3"]
    assert {l["onnx_node"]: l["bias_node"] for l in report["layers"]} == {
        "fc1": "fc1_bias", "fc2": None, "fc3": None}
    portable = onnx.load(str(out / "model.onnx"))
    names = {i.name for i in portable.graph.initializer}
    assert not names & {"w1t", "w2", "w3"}  # the float weights are gone
    assert {"w1t.bqq.y_bits", "w2.bqq.scales", "b1", "b2"} <= names
    # The graph's own ops read weights decoded from the packed tensors (transposed where the
    # graph stored W^T: the two MatMuls, not the Gemm with transB).
    assert collections.Counter(n.op_type for n in portable.graph.node) == {
        DECODE_OP: 3, "Transpose": 2, "MatMul": 2, "Add": 1, "Relu": 1, "Gemm": 1}
    parity = report["validation"]["vs_bqq_reference"]
    assert parity["passed"] and parity["outputs"][0]["max_rel"] <= PARITY
    assert "ONNX graph" in report["validation"]["vs_bqq_reference_kind"]
    q = report["sizes"]["quantised_layers"]
    assert q["fp16_bytes"] == 2 * (48 * 40 + 40 * 40 + 40 * 16)
    assert 0 < q["bqq_bytes"] < q["fp16_bytes"] and q["ratio_vs_fp16"] == q["bqq_bytes"] / q["fp16_bytes"]
    assert set(report["latency"]) == {"original fp32 ONNX", "model.onnx"}
    assert json.loads((out / "report.json").read_text())["layers"][0]["bqq_node"].endswith(MATMUL.op_type)
    assert "## Sizes" in (out / "report.md").read_text()


def test_calibration_changes_weights_and_lowers_output_error(tmp_path):
    path = tmp_path / "mlp.onnx"
    model = linear_onnx(path, seed=1)
    rng = np.random.default_rng(5)
    # Anisotropic inputs: a few directions carry most of the energy, which is what
    # output-aware calibration can exploit and a data-free weight fit cannot see.
    basis = rng.standard_normal((48, 48)).astype(np.float32)
    scales = np.exp(-np.arange(48) / 6.0).astype(np.float32)
    calib = (rng.standard_normal((256, 48)).astype(np.float32) * scales) @ basis
    np.savez(tmp_path / "calib.npz", calib)
    source = load_model(path)
    config = BQQConfig(bits=2, group_size=16, steps=0)
    plain = export_bundle(source, tmp_path / "plain", ExportOptions(
        config=config, progress=False, bench_iters=0)).to_dict()
    tuned = export_bundle(source, tmp_path / "tuned", ExportOptions(
        config=config, calib=tmp_path / "calib.npz", progress=False, bench_iters=0)).to_dict()
    # Without --val-data, 20% of the calibration rows (51 of 256) are held out for the verdict.
    assert tuned["calibration"]["samples"] == 205
    assert tuned["validation"]["inputs"]["source"] == "calibration hold-out"
    assert tuned["validation"]["inputs"]["samples"] == 51 and "vs_original" in tuned["validation"]
    assert "vs_original" not in plain["validation"]  # no real inputs: accuracy not measured
    (ref,) = ort_run(model, {"x": calib})
    errors = {}
    for name in ("plain", "tuned"):
        bundle = onnx.load(str(tmp_path / name / "model.onnx"))
        (out,) = ort_run(bundle, {"x": calib})
        errors[name] = float(np.mean((out - ref) ** 2))
    plain_w = {l["layer"]: l["weight_mse"] for l in plain["layers"]}
    tuned_w = {l["layer"]: l["weight_mse"] for l in tuned["layers"]}
    assert plain_w != tuned_w  # calibration changed the quantised weights
    assert errors["tuned"] < 0.8 * errors["plain"], errors


def _graph_model(nodes, inits, in_shape, out_shape) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_bias_that_raises_the_rank_is_not_folded(tmp_path):
    # MatMul [n, 32] + bias [1, 1, 16] broadcasts to [1, n, 16]: folding it into BQQMatMul
    # (output [n, 16]) would change the output rank, so the Add must stay in the graph.
    rng = np.random.default_rng(0)
    model = _graph_model(
        [helper.make_node("MatMul", ["x", "w"], ["h"], name="fc"),
         helper.make_node("Add", ["h", "b"], ["y"], name="fc_bias")],
        {"w": rng.standard_normal((32, 16)).astype(np.float32),
         "b": rng.standard_normal((1, 1, 16)).astype(np.float32)}, ["n", 32], [1, "n", 16])
    path = tmp_path / "bcast.onnx"
    onnx.save(model, str(path))
    (cand,), rejected = surgery.find_candidates(surgery.name_nodes(model))
    assert cand.bias is None and rejected == []
    out = tmp_path / "bundle"
    export_bundle(load_model(path), out, ExportOptions(config=BQQConfig.preset("fast", group_size=16),
                                                       bench_iters=0))
    bqq = onnx.load(str(out / "model.onnx"))
    x = rng.standard_normal((3, 32)).astype(np.float32)
    (y,) = ort_run(bqq, {"x": x})
    assert y.shape == (1, 3, 16)


def test_weights_left_in_float_are_reported_with_a_reason():
    # torch.onnx shares equal tensors through Identity: b's bias is a's bias. Folding a's
    # shared bias would let the reference graph rewrite b's bias too, so both Gemms stay in
    # float, each with its reason; the activation x activation MatMul is not a layer at all.
    rng = np.random.default_rng(0)
    model = _graph_model(
        [helper.make_node("Identity", ["a_bias"], ["b_bias"], name="share"),
         helper.make_node("Gemm", ["x", "a_w", "a_bias"], ["h"], name="a", transB=1),
         helper.make_node("Gemm", ["h", "b_w", "b_bias"], ["h2"], name="b", transB=1),
         helper.make_node("MatMul", ["h2", "h2t"], ["y"], name="scores"),
         helper.make_node("Transpose", ["h2"], ["h2t"], name="t")],
        {"a_w": rng.standard_normal((16, 16)).astype(np.float32),
         "b_w": rng.standard_normal((16, 16)).astype(np.float32),
         "a_bias": np.zeros(16, np.float32)}, ["n", 16], ["n", "n"])
    candidates, rejected = surgery.find_candidates(surgery.name_nodes(model))
    assert candidates == []
    assert {r["onnx_node"]: r["reason"] for r in rejected} == {
        "a": "Gemm bias a_bias feeds 2 nodes",
        "b": "Gemm bias b_bias is not a float32 [M] constant with beta 1"}


def test_fp16_conversion_covers_scalar_constants_and_constant_of_shape():
    # Constant(value_float) and ConstantOfShape without a value are float32 by definition;
    # left as they are, the fp16 graph mixes types and ONNX Runtime refuses it.
    model = _graph_model(
        [helper.make_node("Constant", [], ["half"], name="c", value_float=0.5),
         helper.make_node("Constant", [], ["pair"], name="c2", value_floats=[1.0, 2.0]),
         helper.make_node("Shape", ["x"], ["shape"], name="s"),
         helper.make_node("ConstantOfShape", ["shape"], ["zeros"], name="z"),
         helper.make_node("Mul", ["x", "half"], ["m"], name="mul"),
         helper.make_node("Add", ["m", "zeros"], ["a"], name="add"),
         helper.make_node("Add", ["a", "pair"], ["y"], name="add2")],
        {}, ["n", 2], ["n", 2])
    half_model = surgery.to_fp16(model)
    x = np.array([[2.0, 4.0]], np.float32)
    (y,) = ort_run(half_model, {"x": x.astype(np.float16)})
    assert y.dtype == np.float16
    np.testing.assert_array_equal(y, [[2.0, 4.0]])  # 0.5 * x + 0 + [1, 2], exact in fp16
