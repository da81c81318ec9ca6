"""Dynamic shapes end to end: the --shapes grammar, the default range of every dynamic dim,
and the profile carried into report.json, engine_build.json, the device kit's trtexec line and
the torch exports (.pt2 programs keep their dims and Dim bounds)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from bqq_deploy.cli import build as build_cli
from bqq_deploy.config import BQQConfig
from bqq_deploy.errors import InputError
from bqq_deploy.export import ExportOptions, export_bundle, load_model
from bqq_deploy.specs import (DEFAULT_DIM_RANGE, DEFAULT_MAX_BATCH, ShapeRange, TensorSpec,
                              parse_shape_range, resolve_profiles)

CONFIG = BQQConfig(bits=2, group_size=16, steps=0)


@pytest.mark.parametrize("text, expected", [
    ("ids:1x1/2x128/8x512", ShapeRange("ids", (1, 1), (2, 128), (8, 512))),
    ("x:4x3", ShapeRange("x", (4, 3), (4, 3), (4, 3))),
    ("1x3/2x3/4x3", ShapeRange(None, (1, 3), (2, 3), (4, 3))),
    ("ids:1x1/1x8/2x8:int32", ShapeRange("ids", (1, 1), (1, 8), (2, 8), "int32")),
    ("serving_default_x:0:1x4/1x4/2x4", ShapeRange("serving_default_x:0", (1, 4), (1, 4), (2, 4))),
])
def test_shape_range_grammar(text, expected):
    assert parse_shape_range(text) == expected


@pytest.mark.parametrize("text, message", [
    ("ids:1x1/2x128", "expected NAME:MIN/OPT/MAX"), ("ids:", "expected NAME:MIN/OPT/MAX"),
    ("ids:1x1/2x2x2/3x3", "same number of dims"), ("ids:2x1/1x1/4x1", "1 <= min <= opt <= max"),
    ("ids:0x1/1x1/1x1", "1 <= min <= opt <= max"), ("ids:1xa/1x1/1x1", "expected NAME:MIN/OPT/MAX"),
])
def test_shape_range_grammar_rejects(text, message):
    with pytest.raises(InputError, match=message):
        parse_shape_range(text)


TEXT = [TensorSpec("ids", ("batch", "seq"), "int64"), TensorSpec("mask", ("batch", "seq"), "int64")]


def test_default_ranges_and_what_changes_them():
    lo, opt, hi = DEFAULT_DIM_RANGE
    for spec in resolve_profiles(TEXT):
        assert (spec.min, spec.opt, spec.max) == ((1, lo), (1, opt), (DEFAULT_MAX_BATCH, hi))
    # real data sets opt (and max when it is longer than the default)
    ids, mask = resolve_profiles(TEXT, hints={"ids": (16, 24), "mask": (16, 24)})
    assert ids.opt == mask.opt == (1, 24)
    (long,) = resolve_profiles(TEXT[:1], hints={"ids": (1, 900)})
    assert long.max == (DEFAULT_MAX_BATCH, 900)
    # a range given for one input applies to every input sharing its symbolic dim
    ids, mask = resolve_profiles(TEXT, [parse_shape_range("ids:1x4/2x16/4x64")])
    assert (mask.min, mask.opt, mask.max) == ((1, 4), (2, 16), (4, 64))
    with pytest.raises(InputError, match="shared by several inputs but given two ranges"):
        resolve_profiles(TEXT, [parse_shape_range("ids:1x4/2x16/4x64"),
                                parse_shape_range("mask:1x4/2x16/4x32")])
    # a torch.export Dim's bounds clip the default
    (spec,) = resolve_profiles(TEXT[:1], dim_bounds={"seq": (2, 64)})
    assert (spec.min[1], spec.opt[1], spec.max[1]) == (2, 64, 64)
    # static dims of a traced torch model are sample sizes: a range may replace them, and its
    # batch becomes dynamic; an ONNX file's static dims are the model's
    (traced,) = resolve_profiles([TensorSpec("x", (2, 8))], [parse_shape_range("x:1x4/2x8/4x16")],
                                 traced=True)
    assert traced.shape == ("batch", "x_dim1") and traced.max == (4, 16)
    with pytest.raises(InputError, match="dim 1 is fixed at 8 in the model"):
        resolve_profiles([TensorSpec("x", (2, 8))], [parse_shape_range("x:2x4/2x8/2x16")])


def text_model(path, vocab=30, dim=32):
    """ids [batch, seq] int64 -> embedding Gather -> MatMul -> Relu -> MatMul -> y [batch, seq, 16]."""
    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "ids"], ["e"], name="embed"),
         helper.make_node("MatMul", ["e", "w1"], ["h"], name="/enc/fc1/MatMul"),
         helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("MatMul", ["r", "w2"], ["y"], name="/enc/fc2/MatMul")], "text",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", 16])],
        [numpy_helper.from_array(rng.standard_normal((vocab, dim)).astype(np.float32), "table"),
         numpy_helper.from_array(rng.standard_normal((dim, 48)).astype(np.float32) / 6, "w1"),
         numpy_helper.from_array(rng.standard_normal((48, 16)).astype(np.float32) / 7, "w2")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))


def _export_trt(source, out, **options):
    return export_bundle(source, out, ExportOptions(config=CONFIG, target="trt", build_on_device=True,
                                                    progress=False, bench_iters=0, **options))


def test_dynamic_sequence_reaches_the_profile_and_the_device_kit(tmp_path):
    text_model(tmp_path / "text.onnx")
    source = load_model(tmp_path / "text.onnx")
    # no data: the defaults, said in the report; integer ids are not invented for accuracy
    report = _export_trt(source, tmp_path / "default")
    (spec,) = report.inputs
    assert (spec["min"], spec["opt"], spec["max"]) == ([1, 1], [1, 128], [DEFAULT_MAX_BATCH, 512])
    assert report.shape_ranges.startswith("defaults") and "dim 1 1..512 (opt 128)" in report.shape_ranges
    assert "vs_original" not in report.validation
    assert [layer.layer for layer in report.layers] == ["enc.fc1", "enc.fc2", "table"]  # + embedding
    # real sentences of length 12: opt follows them, the verdict rests on them
    np.savez(tmp_path / "val.npz", ids=np.random.default_rng(1).integers(0, 30, (10, 12)))
    report = _export_trt(source, tmp_path / "val", val=tmp_path / "val.npz")
    assert report.inputs[0]["opt"] == [1, 12] and "vs_original" in report.validation
    # --shapes: exactly that range, in engine_build.json and the trtexec line
    report = _export_trt(source, tmp_path / "given", shapes=("ids:1x4/2x16/4x64",))
    settings = json.loads((tmp_path / "given" / "engine_build.json").read_text())
    assert settings["inputs"][0] == {"name": "ids", "shape": ["batch", "seq"], "dtype": "int64",
                                           "min": [1, 4], "opt": [2, 16], "max": [4, 64]}
    readme = (tmp_path / "given" / "README.md").read_text()
    assert "--minShapes=ids:1x4 --optShapes=ids:2x16 --maxShapes=ids:4x64" in readme
    assert "--maxShapes=ids:4x64" in (tmp_path / "given" / "build_engine.sh").read_text()


def test_torch_export_programs_keep_their_dims(tmp_path):
    class Encoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = torch.nn.Linear(32, 48), torch.nn.Linear(48, 16)

        def forward(self, x):  # x [batch, seq, 32]
            return self.fc2(torch.relu(self.fc1(x)))

    torch.manual_seed(0)
    model = Encoder().eval()
    seq = torch.export.Dim("seq", min=2, max=64)
    program = torch.export.export(model, (torch.zeros(2, 8, 32),),
                                  dynamic_shapes=({0: torch.export.Dim("batch"), 1: seq},))
    torch.export.save(program, str(tmp_path / "dyn.pt2"))
    report = _export_trt(load_model(tmp_path / "dyn.pt2"), tmp_path / "dyn")
    (spec,) = report.inputs
    assert spec["min"][1:] == [2, 32] and spec["max"][1:] == [64, 32]  # the Dim's bounds
    dims = onnx.load(str(tmp_path / "dyn" / "model.onnx")).graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and dims[1].dim_param and dims[2].dim_value == 32
    assert report.passed and not report.warnings
    # a static program stays static, and the summary says so
    torch.export.save(torch.export.export(model, (torch.zeros(2, 8, 32),)), str(tmp_path / "static.pt2"))
    report = _export_trt(load_model(tmp_path / "static.pt2"), tmp_path / "static")
    assert report.inputs[0]["min"] == report.inputs[0]["max"] == [2, 8, 32]
    assert any("no dynamic dimension" in w for w in report.warnings)


def test_bqq_build_takes_shapes_before_needing_tensorrt(tmp_path, capsys):
    text_model(tmp_path / "text.onnx")
    _export_trt(load_model(tmp_path / "text.onnx"), tmp_path / "b")
    assert build_cli.main([str(tmp_path / "b"), "--shapes", "ids:1x1/1x2"]) == 2
    assert "expected NAME:MIN/OPT/MAX" in capsys.readouterr().err
    assert build_cli.main([str(tmp_path / "b"), "--shapes", "ids:1x1/1x8/1x4"]) == 2
    assert "1 <= min <= opt <= max" in capsys.readouterr().err


def test_a_trace_that_fixes_a_ranged_dim_is_caught_before_solving(tmp_path):
    # float(x.shape[1]) is a Python number to the tracer: the graph divides by the traced
    # length at every length. Checked at a second shape inside the range, before any solving.
    from bqq_deploy import export_model

    class Specialised(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(32, 32)

        def forward(self, x):
            return self.fc(x) / float(x.shape[1])

    torch.manual_seed(0)
    with pytest.raises(InputError, match="the trace fixed a size that the shape ranges let vary"):
        export_model(Specialised().eval(), torch.randn(2, 8, 32), tmp_path / "out", config=CONFIG,
                     dynamic_shapes={"x": {0: "batch", 1: "seq"}})
    assert not (tmp_path / "out").exists()
    # with the length fixed the same model exports
    report = export_model(Specialised().eval(), torch.randn(2, 8, 32), tmp_path / "fixed",
                          config=CONFIG, dynamic_shapes={"x": {0: "batch"}})
    assert report.passed
