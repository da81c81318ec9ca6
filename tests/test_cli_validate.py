"""bqq-validate end to end on a bundle written by the real export code: the three report
files, exit 1 on an impossible tolerance, exit 2 on bad input."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from bqq_deploy import runtime
from bqq_deploy.cli import validate as cli
from bqq_deploy.config import BQQConfig
from bqq_deploy.export import load_model
from bqq_deploy.export import ExportOptions, export_bundle


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """x[n, 32] -> MatMul -> Relu -> MatMul -> logits[n, 10], quantised (solver steps 0: fast)."""
    root = tmp_path_factory.mktemp("validate")
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((32, 48)).astype(np.float32) / 6
    w2 = rng.standard_normal((48, 10)).astype(np.float32) / 7
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"), helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("MatMul", ["r", "w2"], ["logits"], name="fc2")], "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 10])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    model = root / "mlp.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(model))
    out = root / "bundle"
    export_bundle(load_model(model), out, ExportOptions(
        config=BQQConfig(bits=2, group_size=16, steps=0), target="trt", build_on_device=True,
        progress=False, bench_iters=1))
    return model, out


def test_report_files_and_metrics_match_the_library(bundle, tmp_path):
    model, out = bundle
    report_dir = tmp_path / "report"
    code = cli.main([str(out), "--reference", str(model), "-o", str(report_dir), "--random", "3",
                     "--batch", "4", "--iters", "5", "--min-cosine", "off", "--min-top1", "off", "-q"])
    assert code == 0
    assert sorted(p.name for p in report_dir.iterdir()) == ["latency.png", "validation.json", "validation.md"]
    assert (report_dir / "latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads((report_dir / "validation.json").read_text())
    # The same seeded inputs through the library give the same numbers.
    candidate, reference = runtime.load(out), runtime.load(model)
    expected = runtime.validate(reference, candidate,
                                cli.random_inputs(candidate.input_specs, 3, 4, seed=0),
                                runtime.Tolerances(None, None, None))
    got = data["accuracy"]["outputs"][0]
    assert got["name"] == "logits" and got["shape"] == [4, 10]
    assert got["cosine"] == pytest.approx(expected.outputs[0].cosine, rel=1e-12)
    assert got["top1"] == pytest.approx(expected.outputs[0].top1)
    assert data["accuracy"]["passed"] is True and data["accuracy"]["samples"] == 3
    assert set(data["latency"]) == {"reference", "candidate"}
    assert len(data["latency"]["candidate"]["samples_ms"]) == 5
    assert data["latency"]["candidate"]["backend"].endswith("model.onnx")
    text = (report_dir / "validation.md").read_text()
    assert "## Accuracy" in text and "## Latency" in text and "![latency](latency.png)" in text


def test_impossible_tolerance_exits_1_and_still_writes_the_report(bundle, tmp_path, capsys):
    model, out = bundle
    code = cli.main([str(out), "--reference", str(model), "-o", str(tmp_path / "r"), "--random", "1",
                     "--iters", "2", "--min-cosine", "1.5"])
    assert code == 1
    err = capsys.readouterr().err
    assert "bqq-validate: check failed: logits: cosine similarity" in err and "< 1.5" in err
    assert json.loads((tmp_path / "r" / "validation.json").read_text())["accuracy"]["passed"] is False


def test_reference_defaults_to_the_model_in_report_json(bundle, tmp_path):
    _, out = bundle
    assert cli.main([str(out), "-o", str(tmp_path / "r"), "--random", "1", "--iters", "2",
                     "--min-cosine", "off", "--min-top1", "off", "-q"]) == 0


def test_npz_inputs_are_used(bundle, tmp_path):
    model, out = bundle
    np.savez(tmp_path / "b.npz", x=np.ones((2, 32), np.float32))
    assert cli.main([str(out), "--reference", str(model), "-o", str(tmp_path / "r"), "--inputs",
                     str(tmp_path / "b.npz"), "--iters", "2", "--min-cosine", "off", "--min-top1", "off"]) == 0
    data = json.loads((tmp_path / "r" / "validation.json").read_text())
    assert data["accuracy"]["samples"] == 1 and data["latency"]["reference"]["batch_size"] == 2


@pytest.mark.parametrize("args, message", [
    (["--inputs", "{tmp}/missing.npz"], "No such file or directory"),
    (["--inputs", "{tmp}/bad.npz"], "not a readable .npz file"),
    (["--inputs", "{tmp}/two.npz"], "model inputs are ['x']"),
    (["--reference", "{tmp}/model.txt"], "cannot run model.txt"),
    (["--iters", "0"], "must be >= 1"),
])
def test_bad_input_exits_2_with_one_line(bundle, tmp_path, capsys, args, message):
    model, out = bundle
    (tmp_path / "bad.npz").write_text("not a zip")
    (tmp_path / "model.txt").write_text("?")
    np.savez(tmp_path / "two.npz", a=np.ones((1, 32), np.float32), b=np.ones((1, 32), np.float32))
    argv = [str(out), "-o", str(tmp_path / "r")] + [a.format(tmp=tmp_path) for a in args]
    if "--reference" not in args:
        argv += ["--reference", str(model)]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("bqq-validate: error:") and message in err and "\n" not in err
    assert not (tmp_path / "r").exists()


def test_missing_target_is_named(tmp_path, capsys):
    assert cli.main([str(tmp_path / "nowhere"), "-o", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"bqq-validate: error: {tmp_path / 'nowhere'}: no such bundle directory, engine or ONNX file"
    assert not (tmp_path / "r").exists()
