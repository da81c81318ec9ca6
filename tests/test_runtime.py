"""bqq_deploy.runtime: ONNX Runtime and PyTorch back ends, validate() metrics against values
computed by hand, tolerance failures, report contents and benchmark()."""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from bqq_deploy import runtime
from bqq_deploy.errors import EngineError

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None


def matmul_onnx(path, weight: np.ndarray, op: str = "MatMul"):
    """y = x @ weight (op "MatMul"), or y = op(x) for a unary op; x is [n, K] with dynamic n."""
    K, M = weight.shape
    if op == "MatMul":
        nodes = [helper.make_node("MatMul", ["x", "w"], ["y"])]
        inits = [numpy_helper.from_array(weight.astype(np.float32), "w")]
    else:
        nodes, inits = [helper.make_node(op, ["x"], ["y"])], []
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", K])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", M])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


class MatMulModule(torch.nn.Module):
    def __init__(self, weight: np.ndarray):
        super().__init__()
        self.register_buffer("w", torch.from_numpy(weight.astype(np.float32)))

    def forward(self, inp):
        return inp @ self.w


@pytest.fixture
def weight():
    return np.random.default_rng(0).standard_normal((8, 5)).astype(np.float32)


def test_onnxruntime_backend_reports_specs_and_runs(tmp_path, weight):
    backend = runtime.load(matmul_onnx(tmp_path / "m.onnx", weight))
    assert backend.input_specs == [runtime.TensorSpec("x", ("n", 8), np.float32)]
    assert backend.output_names == ["y"] and backend.device == "cpu"
    x = np.random.default_rng(1).standard_normal((3, 8)).astype(np.float32)
    out = backend.run({"x": x})
    # fp32 matmul of 8 terms: summation order differs from numpy's, 1e-5 is ~100 ulp of |y|.
    np.testing.assert_allclose(out["y"], x @ weight, rtol=1e-5, atol=1e-5)


def test_torch_module_torchscript_and_pt2_agree_with_onnx(tmp_path, weight):
    module = MatMulModule(weight).eval()
    example = torch.zeros(4, 8)
    torch.jit.trace(module, example).save(str(tmp_path / "m.pt"))
    torch.export.save(torch.export.export(module, (example,)), str(tmp_path / "m.pt2"))
    onnx_backend = runtime.load(matmul_onnx(tmp_path / "m.onnx", weight))
    feeds = [{"x": np.random.default_rng(i).standard_normal((4, 8)).astype(np.float32)} for i in range(3)]
    for target in (module, tmp_path / "m.pt", tmp_path / "m.pt2"):
        backend = runtime.load(target)
        assert backend.name.startswith("torch[cpu]")
        result = runtime.validate(backend, onnx_backend, feeds)
        # Same fp32 function in two engines: only summation order differs.
        assert result.passed, result.failures
        (metrics,) = result.outputs
        assert metrics.name == "y" and metrics.reference_name == "output"  # paired by position
        assert metrics.cosine > 1 - 1e-6 and metrics.max_rel < 1e-5
    pt2 = runtime.load(tmp_path / "m.pt2")
    assert pt2.input_specs == [runtime.TensorSpec("inp", (4, 8), np.dtype(np.float32))]
    assert [s.name for s in runtime.load(tmp_path / "m.pt").input_specs] == ["inp"]


def permutation_pair(tmp_path):
    """reference y = x, candidate y = x with its two columns swapped."""
    ref = runtime.load(matmul_onnx(tmp_path / "ref.onnx", np.eye(2)))
    cand = runtime.load(matmul_onnx(tmp_path / "cand.onnx", np.array([[0.0, 1.0], [1.0, 0.0]])))
    return ref, cand


def test_validate_metrics_match_hand_computed_values(tmp_path):
    ref, cand = permutation_pair(tmp_path)
    feeds = [{"x": np.array([[3.0, 4.0]], np.float32)}, {"x": np.array([[1.0, 0.0]], np.float32)}]
    result = runtime.validate(ref, cand, feeds, runtime.Tolerances(None, None, None))
    (m,) = result.outputs
    # reference [3, 4, 1, 0], candidate [4, 3, 0, 1]: dot 24, both norms sqrt(26).
    assert m.cosine == pytest.approx(24 / 26, abs=1e-12)
    assert m.max_abs == pytest.approx(1.0) and m.max_rel == pytest.approx(1 / 4)  # max|ref| = 4
    assert m.top1 == 0.0  # both rows' arg-max moved: [B, classes] float output = logits
    assert m.shape == [1, 2] and result.samples == 2 and result.passed


def test_tolerances_fail_with_a_message_per_check(tmp_path):
    ref, cand = permutation_pair(tmp_path)
    feeds = [{"x": np.array([[3.0, 4.0], [1.0, 0.0]], np.float32)}]
    result = runtime.validate(ref, cand, feeds, runtime.Tolerances(min_cosine=0.99, max_rel=0.1, min_top1=0.5))
    assert not result.passed
    assert len(result.failures) == 3
    assert "cosine similarity 0.923077 < 0.99" in result.failures[0]
    assert "max relative error 0.25 > 0.1" in result.failures[1]
    assert "top-1 agreement 0.0000 < 0.5" in result.failures[2]
    loose = runtime.validate(ref, cand, feeds, runtime.Tolerances(min_cosine=0.9, max_rel=0.25, min_top1=0.0))
    assert loose.passed and loose.failures == []
    not_logits = runtime.validate(ref, cand, feeds, runtime.Tolerances(None, None, 1.0), logits=False)
    assert not_logits.passed and not_logits.outputs[0].top1 is None


def test_nan_output_fails_every_tolerance(tmp_path):
    ref = runtime.load(matmul_onnx(tmp_path / "ref.onnx", np.eye(2)))
    cand = runtime.load(matmul_onnx(tmp_path / "sqrt.onnx", np.eye(2), op="Sqrt"))
    result = runtime.validate(ref, cand, [{"x": np.array([[-1.0, 4.0]], np.float32)}],
                              runtime.Tolerances(min_cosine=0.0, max_rel=10.0, min_top1=None))
    assert math.isnan(result.outputs[0].cosine)
    assert any("cosine similarity nan" in f for f in result.failures)
    assert any("max relative error inf" in f for f in result.failures)


def test_report_dict_and_markdown(tmp_path):
    ref, cand = permutation_pair(tmp_path)
    result = runtime.validate(ref, cand, [{"x": np.array([[3.0, 4.0]], np.float32)}])
    data = result.to_dict()
    assert data["passed"] is False and data["samples"] == 1
    assert data["tolerances"] == {"min_cosine": 0.99, "max_rel": None, "min_top1": 0.95}
    assert data["max_rel_definition"] == "max|candidate - reference| / max|reference|"
    assert data["outputs"][0]["max_rel"] == pytest.approx(0.25)
    text = result.to_markdown()
    assert text.startswith("**FAILED**")
    assert "| y | [1, 2] | 0.960000 | 1 | 0.25 | 0.0000 |" in text  # cosine 24/25
    assert "max rel err = max|candidate - reference| / max|reference|" in text
    assert "- y: cosine similarity 0.960000 < 0.99" in text


def test_mismatched_outputs_are_failures_not_crashes(tmp_path, weight):
    a = runtime.load(matmul_onnx(tmp_path / "a.onnx", weight))
    b = runtime.load(matmul_onnx(tmp_path / "b.onnx", weight[:, :3]))
    result = runtime.validate(a, b, [{"x": np.ones((2, 8), np.float32)}])
    assert not result.passed and "shape (2, 3) differs from the reference's (2, 5)" in result.failures[0]


def test_benchmark_on_cpu(tmp_path, weight):
    backend = runtime.load(matmul_onnx(tmp_path / "m.onnx", weight))
    lat = runtime.benchmark(backend, {"x": np.ones((6, 8), np.float32)}, warmup=2, iters=25)
    assert len(lat.samples_ms) == 25 and all(s > 0 for s in lat.samples_ms)
    assert lat.p50_ms <= lat.p90_ms <= lat.p99_ms <= max(lat.samples_ms)
    assert lat.batch_size == 6 and lat.throughput == pytest.approx(6000 / lat.p50_ms)
    assert lat.memory_source == "process peak RSS" and lat.peak_memory_mb > 10
    data = lat.to_dict()
    assert data["iters"] == 25 and data["p50_ms"] == pytest.approx(float(np.median(lat.samples_ms)))
    with pytest.raises(ValueError, match="iters >= 1"):
        runtime.benchmark(backend, {"x": np.ones((1, 8), np.float32)}, iters=0)


def test_feeds_are_bound_by_name_or_position(tmp_path, weight):
    backend = runtime.load(matmul_onnx(tmp_path / "m.onnx", weight))
    x = np.ones((1, 8), np.float32)
    np.testing.assert_array_equal(backend.run({"other": x})["y"], backend.run({"x": x})["y"])
    with pytest.raises(ValueError, match=r"model inputs are \['x'\]"):
        backend.run({"a": x, "b": x})


def test_bundle_directory_runs_its_onnx_without_tensorrt(tmp_path, weight):
    matmul_onnx(tmp_path / "model.onnx", weight)
    (tmp_path / "model.engine").write_bytes(b"not an engine")
    if not HAS_TENSORRT:
        assert runtime.load(tmp_path).name.endswith("model.onnx")
    assert runtime.load(tmp_path, backend="onnxruntime").name.endswith("model.onnx")
    with pytest.raises(ValueError, match="cannot run m.txt"):
        (tmp_path / "m.txt").write_text("x")
        runtime.load(tmp_path / "m.txt")
    with pytest.raises(FileNotFoundError, match="no such model"):
        runtime.load(tmp_path / "missing.onnx")
    with pytest.raises(ValueError, match="backend must be one of"):
        runtime.load(tmp_path, backend="tvm")


@pytest.mark.skipif(HAS_TENSORRT, reason="checks the message shown when TensorRT is missing")
def test_engine_without_tensorrt_says_how_to_get_it(tmp_path):
    (tmp_path / "model.engine").write_bytes(b"x")
    with pytest.raises(EngineError, match="TensorRT's Python package is not importable"):
        runtime.load(tmp_path / "model.engine")
    with pytest.raises(EngineError, match="JetPack"):
        runtime.load(tmp_path, backend="tensorrt")


class _TwoInputs(torch.nn.Module):
    def forward(self, ids, mask):
        return ids - mask


class _OptionalArgument(torch.nn.Module):
    def forward(self, x, temperature: float = 2.0):
        return x / temperature


def test_feeds_bind_by_name_first_then_in_order():
    backend = runtime.load(_TwoInputs())
    assert [s.name for s in backend.input_specs] == ["ids", "mask"]
    # "mask" matches by name; the unmatched "input_ids" fills the remaining input, "ids".
    out = backend.run({"mask": np.zeros(2, np.float32), "input_ids": np.full(2, 5, np.float32)})
    np.testing.assert_array_equal(next(iter(out.values())), [5, 5])
    with pytest.raises(ValueError, match=r"model inputs are \['ids', 'mask'\]"):
        backend.run({"ids": np.zeros(2, np.float32)})


@pytest.mark.parametrize("script", [False, True])
def test_arguments_with_defaults_are_not_inputs(script):
    module = _OptionalArgument()
    backend = runtime.load(torch.jit.script(module) if script else module)
    assert [s.name for s in backend.input_specs] == ["x"]
    out = backend.run({"x": np.full(3, 4.0, np.float32)})
    np.testing.assert_array_equal(next(iter(out.values())), [2.0, 2.0, 2.0])
