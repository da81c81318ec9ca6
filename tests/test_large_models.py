"""What lets an export scale past memory (docs/SCALE.md): large tensors wait on disk while an
export runs (tensors.TensorFiles), the model given is used in place and left as it was, a
tied embedding and LM head are each quantised whichever torch exporter wrote the graph,
calibration statistics are captured a group of layers at a time without changing the result,
and the report states each stage's peak memory. The 0.5B model itself: bench/decoder_scale.py."""

from __future__ import annotations

import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import helper, numpy_helper

from bqq_deploy import BQQConfig, export_model, load_layers
from bqq_deploy.errors import InputError
from bqq_deploy.export import ExportOptions, export_bundle, load_model, onnx_export, pipeline, surgery
from bqq_deploy.runtime import load
from bqq_deploy.tensors import INLINE_BELOW, TensorFiles, external_entry, point_at

from test_export import linear_onnx

transformers = pytest.importorskip("transformers")

# fp32 against fp32 from the same bits and scales: only the summation order differs.
PARITY = 1e-4
CONFIG = BQQConfig.preset("fast", bits=2, group_size=16, steps=20)


def test_tensor_files_hold_large_tensors_and_read_them_back(tmp_path):
    files = TensorFiles(tmp_path)
    big = np.arange(600, dtype=np.float32).reshape(20, 30)
    small = np.ones(4, np.float32)
    tensors = [onnx.TensorProto(), onnx.TensorProto()]
    files.assign(tensors[0], big, "big")
    files.assign(tensors[1], small, "small")
    assert external_entry(tensors[0])[0] == TensorFiles.DATA and external_entry(tensors[1]) is None
    assert tensors[0].ByteSize() < INLINE_BELOW  # the graph holds the reference only
    np.testing.assert_array_equal(files.array(tensors[0]), big)
    np.testing.assert_array_equal(files.array(tensors[1]), small)
    # ONNX Runtime loads a graph saved beside the data
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "big"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 20])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 30])],
                              [tensors[0]])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    with files.session_path(model) as path:
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        (y,) = session.run(None, {"x": np.ones((1, 20), np.float32)})
    np.testing.assert_allclose(y[0], big.sum(0), rtol=1e-6)
    assert [p.name for p in tmp_path.iterdir()] == [TensorFiles.DATA]  # the graph file is gone


def test_external_data_outside_the_directory_is_refused(tmp_path):
    files = TensorFiles(tmp_path)
    for location in ("../secret.bin", "/etc/passwd", ""):
        tensor = helper.make_tensor("w", onnx.TensorProto.FLOAT, [4], np.zeros(4, np.float32))
        point_at(tensor, location, 0, 16)
        with pytest.raises(InputError, match="external data"):
            files.array(tensor)
    tensor = helper.make_tensor("w", onnx.TensorProto.FLOAT, [400], np.zeros(400, np.float32))
    (tmp_path / "short.bin").write_bytes(b"\0" * 100)
    point_at(tensor, "short.bin", 0, 1600)
    with pytest.raises(InputError, match="runs past the end"):
        files.array(tensor)


def _causal_lm():
    torch.manual_seed(0)
    config = transformers.Qwen2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                      num_key_value_heads=1, intermediate_size=64, vocab_size=96,
                                      tie_word_embeddings=True, use_cache=False)
    return transformers.Qwen2ForCausalLM(config)


def _tokens(batch: int, seq: int, seed: int) -> dict[str, torch.Tensor]:
    ids = torch.randint(0, 96, (batch, seq), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones_like(ids)
    mask[0, -1] = 0
    return {"input_ids": ids, "attention_mask": mask}


@pytest.mark.parametrize("exporter", ["torchscript", "torch.export"])
def test_tied_lm_head_and_embedding_are_both_quantised_and_the_model_is_left_as_it_was(
        exporter, tmp_path, monkeypatch):
    if exporter == "torch.export":  # the route of models of LARGE_MODULE_BYTES or more
        monkeypatch.setattr(onnx_export, "LARGE_MODULE_BYTES", 0)
    model = _causal_lm().train()
    before = {name: t.clone() for name, t in model.state_dict().items()}
    example = _tokens(2, 6, seed=0)
    report = export_model(model, example, tmp_path / "b", config=CONFIG,
                          dynamic_shapes={k: {0: "batch", 1: "seq"} for k in example})
    assert report.passed, report.verdict
    ops = {layer.layer: layer.onnx_op for layer in report.layers}
    assert ops["lm_head.weight"] == "MatMul" and ops["model.embed_tokens.weight"] == "Gather"
    assert len(ops) == 2 + 2 * 7 and not report.skipped
    # one torch tensor cannot hold two different W_hat: the ONNX graph is the reference
    assert report.validation["vs_bqq_reference_kind"].startswith("fp32 ONNX graph")
    assert set(report.peak_rss_mib) == set(report.timings_s) and min(report.peak_rss_mib.values()) > 0
    # used in place, never copied, and left as it was
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(before[name], t) for name, t in model.state_dict().items())
    # model.onnx against the torch model holding every W_hat (the head untied from the
    # table), at another batch and length
    state = model.state_dict()
    with torch.no_grad():
        for name, weight in load_layers(tmp_path / "b" / "layers.bqq.safetensors").items():
            if name == "lm_head.weight":
                model.lm_head.weight = torch.nn.Parameter(weight.dequantize())
            else:
                state[name].copy_(weight.dequantize())
            if weight.bias is not None:
                state[name.removesuffix("weight") + "bias"].copy_(weight.bias)
        feeds = _tokens(3, 5, seed=1)
        want = model.eval()(**feeds).logits.numpy()
    got = load(tmp_path / "b" / "model.onnx", backend="onnxruntime",
               providers=["CPUExecutionProvider"]).run({k: v.numpy() for k, v in feeds.items()})
    (got,) = got.values()
    assert np.abs(got - want).max() <= PARITY * np.abs(want).max()


def test_calibration_a_group_of_layers_at_a_time_gives_the_same_layers(tmp_path, monkeypatch):
    path = tmp_path / "mlp.onnx"
    linear_onnx(path, seed=1)
    rng = np.random.default_rng(5)
    np.savez(tmp_path / "calib.npz", rng.standard_normal((64, 48)).astype(np.float32))
    calls = []
    real = surgery.InputCapture.statistics
    monkeypatch.setattr(surgery.InputCapture, "statistics",
                        lambda self, group, feeds: calls.append(len(group)) or real(self, group, feeds))
    options = ExportOptions(config=CONFIG, calib=tmp_path / "calib.npz", progress=False, bench_iters=0)
    export_bundle(load_model(path), tmp_path / "whole", options)
    assert calls == [3]
    monkeypatch.setattr(pipeline, "CAPTURE_BYTES", 1)  # every layer a group of its own
    export_bundle(load_model(path), tmp_path / "grouped", options)
    assert calls == [3, 1, 1, 1]
    assert ((tmp_path / "grouped" / "layers.bqq.safetensors").read_bytes()
            == (tmp_path / "whole" / "layers.bqq.safetensors").read_bytes())


def test_an_onnx_file_with_external_data_is_copied_not_loaded(tmp_path, monkeypatch):
    # The export's working directory gets the source's data file by a file copy (no copy of
    # the weights in memory); a layer left in float keeps reading it there, through
    # onnx.checker (which refuses a data file with several hard links) and ONNX Runtime.
    src = tmp_path / "src"
    src.mkdir()
    model = linear_onnx(tmp_path / "inline.onnx")
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    onnx.save(model, str(src / "mlp.onnx"), save_as_external_data=True, location="mlp.data",
              size_threshold=0)
    loaded = []
    real = onnx.external_data_helper.load_external_data_for_model
    monkeypatch.setattr(onnx.external_data_helper, "load_external_data_for_model",
                        lambda *args: loaded.append(args) or real(*args))
    report = export_bundle(load_model(src / "mlp.onnx"), tmp_path / "b",
                           ExportOptions(config=CONFIG, progress=False, bench_iters=0,
                                         exclude=("w3",)))
    assert report.passed and len(report.layers) == 2 and [s.layer for s in report.skipped] == ["w3"]
    assert not loaded and os.stat(src / "mlp.data").st_nlink == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "inline.onnx", "src"]
    bundle = onnx.load(str(tmp_path / "b" / "model.onnx"))
    w3 = next(t for t in bundle.graph.initializer if t.name == "w3")
    np.testing.assert_array_equal(numpy_helper.to_array(w3), weights["w3"])  # the float layer
    for tensor in onnx.load(str(src / "mlp.onnx")).graph.initializer:  # the source unchanged
        np.testing.assert_array_equal(numpy_helper.to_array(tensor), weights[tensor.name])


def test_no_protobuf_message_holds_the_weights(tmp_path, monkeypatch):
    # Protobuf cannot serialise or parse a message of 2 GiB; an export of a model past that
    # size works only if no ModelProto that goes through protobuf holds the weights. Tested
    # on a small model against a limit lowered in proportion (LIMIT stands for the 2 GiB):
    # the weights take 6 x LIMIT, every message serialised or parsed during the export
    # (onnx.save, onnx.checker, shape inference, ONNX Runtime sessions, onnx.load) less than
    # LIMIT. (The graph without its tensors, 0.2 MB here, is mostly the exporter's per-node
    # metadata: it grows with the layer count, not the weights.) The real size:
    # bench/decoder_scale.py (a 1.98 GB model, bench/results/decoder_scale.md).
    monkeypatch.setattr(onnx_export, "LARGE_MODULE_BYTES", 0)  # the route of large modules
    torch.manual_seed(0)
    config = transformers.Qwen2Config(hidden_size=64, num_hidden_layers=1, num_attention_heads=2,
                                      num_key_value_heads=1, intermediate_size=256,
                                      vocab_size=8192, tie_word_embeddings=True, use_cache=False)
    model = transformers.Qwen2ForCausalLM(config).eval()
    weight_bytes = sum(p.numel() * 4 for p in model.parameters())
    LIMIT = weight_bytes // 6
    sizes = []
    serialize, parse = onnx.ModelProto.SerializeToString, onnx.ModelProto.ParseFromString

    def serialized(self, *args, **kwargs):
        data = serialize(self, *args, **kwargs)
        sizes.append(("serialised", len(data)))
        return data

    def parsed(self, data, *args, **kwargs):
        sizes.append(("parsed", len(data)))
        return parse(self, data, *args, **kwargs)

    monkeypatch.setattr(onnx.ModelProto, "SerializeToString", serialized)
    monkeypatch.setattr(onnx.ModelProto, "ParseFromString", parsed)
    example = _tokens(2, 6, seed=0)
    # The signs of the SVD warm start only: what is measured here does not depend on the bits.
    quick = BQQConfig(bits=1, steps=0, flip_rounds=0, joint_refine=False)
    report = export_model(model, example, tmp_path / "b", config=quick,
                          dynamic_shapes={k: {0: "batch", 1: "seq"} for k in example})
    monkeypatch.undo()
    assert report.passed, report.verdict
    assert len(report.layers) == 2 + 7
    assert {kind for kind, _ in sizes} == {"serialised", "parsed"}  # the hooks saw the export
    assert max(n for _, n in sizes) < LIMIT, (LIMIT, sorted(sizes, key=lambda s: -s[1])[:3])
