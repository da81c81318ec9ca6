"""What ships is small (docs/ONNX.md): embedding tables stored packed, each weight stored once
per bundle, and a portable file that ONNX Runtime folds back to the float graph at load."""

from __future__ import annotations

import collections
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.external_data_helper import ExternalDataInfo, uses_external_data

from bqq_deploy.bundle import Bundle
from bqq_deploy.config import BQQConfig
from bqq_deploy.export import ExportOptions, export_bundle, load_model, surgery
from bqq_deploy.contract import GATHER
from bqq_deploy.export.external import INLINE_BELOW
from bqq_deploy.format import tensor_spans

CONFIG = BQQConfig(bits=2, group_size=16, steps=0, flip_rounds=2)
# Parity of two fp32 implementations of the same weights: summation order only
# (docs/FORMAT.md section 3 bound, 1e-5 of the output scale, with headroom for the MatMul).
PARITY = 1e-4


def token_model(path, vocab: int = 96, width: int = 64, seed: int = 0) -> onnx.ModelProto:
    """ids [n, s] -> Gather(table [vocab, width]) -> MatMul(W1) + b1 -> Relu -> MatMul(W2)."""
    rng = np.random.default_rng(seed)
    inits = {"table": rng.standard_normal((vocab, width)).astype(np.float32),
             "w1": rng.standard_normal((width, width)).astype(np.float32) / 8,
             "b1": rng.standard_normal(width).astype(np.float32),
             "w2": rng.standard_normal((width, 32)).astype(np.float32) / 8}
    nodes = [helper.make_node("Gather", ["table", "ids"], ["emb"], name="embed"),
             helper.make_node("MatMul", ["emb", "w1"], ["h"], name="fc1"),
             helper.make_node("Add", ["h", "b1"], ["hb"], name="fc1_bias"),
             helper.make_node("Relu", ["hb"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "w2"], ["y"], name="fc2")]
    graph = helper.make_graph(nodes, "tokens",
                              [helper.make_tensor_value_info("ids", TensorProto.INT64, ["n", "s"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", "s", 32])],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.save(model, str(path))
    return model


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    root = tmp_path_factory.mktemp("tokens")
    token_model(root / "tokens.onnx")
    source = load_model(root / "tokens.onnx", input_shapes=["ids:2x5:int64"])
    report = export_bundle(source, root / "bundle", ExportOptions(config=CONFIG, bench_iters=0,
                                                                  progress=False))
    return root, Bundle(root / "bundle"), report


def _run(path, feeds):
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


def _optimised_ops(path, tmp_path) -> collections.Counter:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.optimized_model_filepath = str(tmp_path / f"{path.stem}.optimised.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    model = onnx.load(options.optimized_model_filepath)
    return collections.Counter(n.op_type for n in model.graph.node), model


def test_embedding_table_is_packed_and_lookups_match_the_dequantised_table(bundle):
    root, b, report = bundle
    layers = {entry.layer: entry for entry in report.layers}
    assert layers["table"].onnx_op == "Gather" and layers["table"].bqq_node == "table.BQQGather"
    ids = np.random.default_rng(1).integers(0, 96, (3, 7)).astype(np.int64)
    # The float model with every quantised weight replaced by its W_hat is what the portable
    # file must compute: the table rows it decodes are W_hat's rows.
    fp32 = surgery.name_nodes(onnx.load(str(root / "tokens.onnx")))
    found = surgery.find_candidates(fp32)[0] + surgery.find_embeddings(fp32)[0]
    from bqq_deploy.format import load_layers
    weights = load_layers(b / Bundle.LAYERS)
    reference = surgery.with_weights(fp32, found, weights)
    (ref,) = ort.InferenceSession(reference.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"ids": ids})
    out = _run(b / Bundle.PORTABLE_ONNX, {"ids": ids})
    assert np.abs(out - ref).max() <= PARITY * np.abs(ref).max()
    # fp16 twin: fp16 rounding of activations and weights, ~1e-3 per op over three ops.
    out16 = _run(b / Bundle.PORTABLE_ONNX_FP16, {"ids": ids})
    assert out16.dtype == np.float16
    assert np.abs(out16.astype(np.float32) - ref).max() <= 2e-2 * np.abs(ref).max()


def test_tensorrt_files_look_tables_up_with_the_bqqgather_plugin(bundle):
    _, b, _ = bundle
    for name, scale_type in ((Bundle.TRT_ONNX, TensorProto.FLOAT), (Bundle.TRT_ONNX_FP16, TensorProto.FLOAT16)):
        model = onnx.load(str(b / name))
        (node,) = [n for n in model.graph.node if n.op_type == GATHER.op_type]
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        # One stack more than the linears' 2 (ExportOptions.embedding_bits' default).
        assert attrs == {"out_features": 96, "in_features": 64, "group_rows": 16, "group_cols": 16,
                         "rank": 8, "stacks": 3, "format_version": 1, "plugin_version": b"1",
                         "plugin_namespace": b"bqq"}
        assert list(node.input) == ["ids", "table.bqq.y_bits", "table.bqq.z_bits", "table.bqq.scales"]
        inits = {i.name: i for i in model.graph.initializer}
        # The plugin's output dtype is its scales' dtype (the contract): fp32 here, fp16 there.
        assert inits["table.bqq.scales"].data_type == scale_type
        assert inits["table.bqq.y_bits"].data_type == TensorProto.INT32
        assert not any(n.op_type == "Gather" for n in model.graph.node)
        assert not model.functions  # TensorRT files carry no function (docs/ONNX.md)


def test_the_portable_file_folds_back_to_the_float_graph(bundle, tmp_path):
    root, b, _ = bundle
    float_ops, _ = _optimised_ops(root / "tokens.onnx", tmp_path)
    bqq_ops, optimised = _optimised_ops(b / Bundle.PORTABLE_ONNX, tmp_path)
    # Nothing per run depends on X but the products: no decode op survives session load.
    assert bqq_ops == float_ops
    assert not {"BitwiseAnd", "Slice", "Transpose", "Cast", "BQQDecode", "BQQMatMul"} & set(bqq_ops)
    assert not [i.name for i in optimised.graph.initializer if i.data_type == TensorProto.INT32]


def test_each_weight_is_stored_once_per_bundle(bundle):
    _, b, report = bundle
    spans = {key: span for key, span in tensor_spans(b / Bundle.LAYERS).items()}
    stored = collections.Counter()
    for name in (Bundle.PORTABLE_ONNX, Bundle.PORTABLE_ONNX_FP16, Bundle.TRT_ONNX, Bundle.TRT_ONNX_FP16):
        model = onnx.load(str(b / name), load_external_data=False)
        for tensor in model.graph.initializer:
            if not uses_external_data(tensor):
                assert len(tensor.raw_data) < INLINE_BELOW, (name, tensor.name)
                continue
            info = ExternalDataInfo(tensor)
            assert info.location in (Bundle.LAYERS, Bundle.WEIGHTS), info.location
            if info.location == Bundle.LAYERS:  # the packed tensors are the BQQ file's own bytes
                assert spans[tensor.name.replace(".bqq.", ".", 1)] == (info.offset, info.length)
            stored[(info.location, info.offset)] += 0  # a span, however many files use it
    weights = (b / Bundle.WEIGHTS).read_bytes() if (b / Bundle.WEIGHTS).exists() else b""
    offsets = sorted(offset for location, offset in stored if location == Bundle.WEIGHTS)
    chunks = [weights[a:z] for a, z in zip(offsets, offsets[1:] + [len(weights)])]
    assert len(set(chunks)) == len(chunks)  # no tensor twice in weights.bin
    # Four ONNX forms, one copy of the weights: the data files hold what model.onnx reads
    # plus fp16 copies of its few float tensors (this toy model's protos and report are not
    # small next to its weights; bench/ort_footprint.py measures whole bundles of real ones).
    portable = onnx.load(str(b / Bundle.PORTABLE_ONNX), load_external_data=False)
    read = sum(ExternalDataInfo(t).length for t in portable.graph.initializer if uses_external_data(t))
    data_files = (b / Bundle.LAYERS).stat().st_size + len(weights)
    assert read <= data_files <= 1.25 * read
    assert json.loads((b / Bundle.REPORT).read_text())["sizes"]["bundle_bytes"] == report.sizes["bundle_bytes"]


def test_embeddings_float_keeps_the_table(tmp_path):
    token_model(tmp_path / "tokens.onnx")
    source = load_model(tmp_path / "tokens.onnx", input_shapes=["ids:2x5:int64"])
    report = export_bundle(source, tmp_path / "bundle", ExportOptions(
        config=CONFIG, bench_iters=0, progress=False, embeddings="float"))
    assert "table" not in {entry.layer for entry in report.layers}
    model = onnx.load(str(tmp_path / "bundle" / Bundle.PORTABLE_ONNX))
    (gather,) = [n for n in model.graph.node if n.op_type == "Gather"]
    assert gather.input[0] == "table"


def test_ort_session_decodes_the_weights_itself_and_computes_the_same(bundle):
    from bqq_deploy.runtime import ort_session

    _, b, _ = bundle
    ids = np.random.default_rng(2).integers(0, 96, (2, 9)).astype(np.int64)
    for name, tol in ((Bundle.PORTABLE_ONNX, PARITY), (Bundle.PORTABLE_ONNX_FP16, 2e-2)):
        plain = _run(b / name, {"ids": ids})
        session = ort_session(b / name)
        # The graph ONNX Runtime is given holds no decode: the weights arrive decoded.
        assert {i.name for i in session.get_inputs()} == {"ids"}
        (mine,) = session.run(None, {"ids": ids})
        # Same W_hat from torch instead of the ONNX ops: summation order only (fp16: one
        # rounding of each weight either way, then fp16 arithmetic).
        assert mine.dtype == plain.dtype
        assert np.abs(mine.astype(np.float32) - plain.astype(np.float32)).max() <= tol * np.abs(plain).max()


def test_ort_session_decoding_into_a_directory_computes_the_same_and_leaves_nothing(bundle, tmp_path):
    from bqq_deploy.runtime import ort_session

    _, b, _ = bundle
    ids = np.random.default_rng(4).integers(0, 96, (2, 9)).astype(np.int64)
    (in_memory,) = ort_session(b / Bundle.PORTABLE_ONNX).run(None, {"ids": ids})
    (spilled,) = ort_session(b / Bundle.PORTABLE_ONNX, decode_dir=tmp_path).run(None, {"ids": ids})
    assert np.array_equal(spilled, in_memory)  # the same decoded bytes, mapped instead of copied
    assert list(tmp_path.iterdir()) == []


def test_onnx_runtime_copies_the_in_memory_weights_so_ort_session_may_free_them(bundle):
    """ort_session frees its decode buffer once the session exists: that is only safe while
    ONNX Runtime copies in-memory external data at creation (its documented behaviour),
    which this pins for the installed version."""
    import onnxruntime as ort

    from bqq_deploy.runtime.ort_session import decoded_model

    _, b, _ = bundle
    ids = np.random.default_rng(3).integers(0, 96, (2, 9)).astype(np.int64)
    model, weights = decoded_model(b / Bundle.PORTABLE_ONNX, "in-memory-weights")
    options = ort.SessionOptions()
    options.add_external_initializers_from_files_in_memory(["in-memory-weights"], [weights], [weights.nbytes])
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    (before,) = session.run(None, {"ids": ids})
    weights[:] = 0xFF  # every float a NaN
    (after,) = session.run(None, {"ids": ids})
    assert np.array_equal(before, after)
