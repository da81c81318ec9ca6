"""Model files and --input-shape: what loads, and the one-line errors for what does not."""

from __future__ import annotations

import pytest
import torch

from bqq_deploy.errors import InputError
from bqq_deploy.export.loaders import load_model, parse_input_shape, specs_from_shapes
from bqq_deploy.specs import TensorSpec
from bqq_deploy.models import DigitsViT


@pytest.mark.parametrize("text, expected", [
    ("2x16x128", (None, (2, 16, 128), "float32")),
    ("7", (None, (7,), "float32")),
    ("ids:1x128:int64", ("ids", (1, 128), "int64")),
    ("image:4x1x8x8", ("image", (4, 1, 8, 8), "float32")),
    ("1x3:float16", (None, (1, 3), "float16")),
])
def test_parse_input_shape_good(text, expected):
    assert parse_input_shape(text) == expected


@pytest.mark.parametrize("text, message", [
    ("", "expected DIMS"), ("2x", "expected DIMS"), ("axb", "expected DIMS"),
    ("2x-3", "expected DIMS"), ("0x3", ">= 1"), ("x:2:float8", "unknown dtype"),
    ("2,3", "expected DIMS"),
])
def test_parse_input_shape_bad(text, message):
    with pytest.raises(InputError, match=message):
        parse_input_shape(text)


def test_specs_from_shapes_names_and_counts():
    known = [TensorSpec("ids", ("batch", 8), "int64"), TensorSpec("mask", ("batch", 8), "int64")]
    assert specs_from_shapes(["2x8", "2x8:int64"], known) == [
        TensorSpec("ids", (2, 8), "float32"), TensorSpec("mask", (2, 8), "int64")]
    with pytest.raises(InputError, match="no input 'other'"):
        specs_from_shapes(["other:2x8", "mask:2x8"], known)
    with pytest.raises(InputError, match="has 2 inputs"):
        specs_from_shapes(["2x8"], known)
    with pytest.raises(InputError, match="names for all inputs or for none"):
        specs_from_shapes(["ids:2x8", "2x8"], known)


def _tiny(tmp_path):
    torch.manual_seed(0)
    return DigitsViT(dim=16, depth=1, heads=2, mlp_ratio=1).eval()


def test_torchscript_without_sidecar_needs_input_shape(tmp_path):
    path = tmp_path / "m.pt"
    torch.jit.script(_tiny(tmp_path)).save(str(path))
    with pytest.raises(InputError, match="input shapes unknown; pass --input-shape"):
        load_model(path)
    source = load_model(path, input_shapes=["3x1x8x8"])
    assert source.kind == "torchscript" and source.inputs == [TensorSpec("input", (3, 1, 8, 8))]
    with pytest.raises(InputError, match=r"does not run on input shape input=3x2x8x8"):
        load_model(path, input_shapes=["3x2x8x8"])


def test_exported_program_keeps_its_dynamic_batch(tmp_path):
    model = _tiny(tmp_path)
    program = torch.export.export(model, (torch.zeros(2, 1, 8, 8),),
                                  dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
    path = tmp_path / "m.pt2"
    torch.export.save(program, str(path))
    source = load_model(path)
    assert source.kind == "exported"
    (spec,) = source.inputs
    assert isinstance(spec.shape[0], str) and spec.shape[1:] == (1, 8, 8)


def test_pickled_module_only_with_allow_pickle(tmp_path):
    path = tmp_path / "m.pth"
    torch.save(_tiny(tmp_path), str(path))
    with pytest.raises(InputError, match="--allow-pickle.*arbitrary code"):
        load_model(path, input_shapes=["1x1x8x8"])
    source = load_model(path, input_shapes=["1x1x8x8"], allow_pickle=True)
    assert source.kind == "pickle" and isinstance(source.module, DigitsViT)


@pytest.mark.parametrize("name, content, message", [
    ("m.onnx", b"not a protobuf \x00\xff", "not a valid ONNX model"),
    ("m.pt", b"garbage bytes", "not a TorchScript archive"),
    ("m.pt2", b"PK\x03\x04 truncated zip", "not a torch.export program"),
    ("m.h5", b"whatever", "unsupported model file extension '.h5'"),
])
def test_bad_model_files(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(InputError, match=message):
        load_model(path, input_shapes=["1x4"])


def test_missing_model_file(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        load_model(tmp_path / "absent.onnx")
