"""bqq-export end to end: exit codes, one-line errors, no partial bundles."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bqq_deploy.cli.export import main
from test_export import linear_onnx, tiny_vit_file

FAST = ["--quality", "fast", "--bits", "2", "--group-size", "16", "--no-validate", "-q"]


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def _one_line_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("bqq-export: error: ")
    return lines[0]


def test_export_torchscript_bundle(tmp_path, capsys):
    model = tiny_vit_file(tmp_path)
    out = tmp_path / "out" / "bundle"
    assert main([str(model), "-o", str(out), "--quality", "fast", "--group-size", "16",
                 "--exclude", "head.*"]) == 0
    files = {p.name for p in out.iterdir()}
    assert {"model.onnx", "model.trt.onnx", "model.trt.fp16.onnx", "layers.bqq.safetensors",
            "report.json", "report.md"} <= files
    report = json.loads((out / "report.json").read_text())
    assert report["skipped"] == [{"layer": "head.weight", "onnx_node": "/head/Gemm",
                                  "reason": "--exclude head.*"}]
    assert len(report["layers"]) == 6 and report["validation"]["vs_bqq_reference"]["passed"]
    summary = capsys.readouterr().out
    assert "quantised bytes vs fp16" in summary and "parity vs float W_hat model" in summary and "verdict" in summary
    assert _leftovers(out.parent) == []
    # an existing non-empty bundle is refused, then replaced with --force
    assert main([str(model), "-o", str(out), *FAST]) == 2
    assert "not empty (pass --force" in _one_line_error(capsys.readouterr().err)
    assert main([str(model), "-o", str(out), *FAST, "--force"]) == 0
    assert len(json.loads((out / "report.json").read_text())["layers"]) == 7
    assert _leftovers(out.parent) == []



def test_export_torch_export_program(tmp_path):
    # .pt2 goes through torch's dynamo-based exporter (needs onnxscript); the bundle must still
    # match the PyTorch BQQ model (the same 1e-4 bound the report's check uses) with a
    # dynamic batch.
    import torch

    from bqq_deploy.models import DigitsViT

    torch.manual_seed(0)
    module = DigitsViT(dim=16, depth=1, heads=2, mlp_ratio=1).eval()
    program = torch.export.export(module, (torch.zeros(2, 1, 8, 8),),
                                  dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
    path = tmp_path / "m.pt2"
    torch.export.save(program, str(path))
    out = tmp_path / "bundle"
    assert main([str(path), "-o", str(out), *FAST]) == 0
    report = json.loads((out / "report.json").read_text())
    check = report["validation"]["vs_bqq_reference"]
    assert check["passed"] and check["outputs"][0]["max_rel"] <= 1e-4
    import onnx
    batch = onnx.load(str(out / "model.onnx")).graph.input[0].type.tensor_type.shape.dim[0]
    assert batch.dim_param and not batch.HasField("dim_value")


def test_repeated_export_reuses_the_layer_cache(tmp_path):
    # An interrupted or repeated export must not solve finished layers again: the second
    # run reads every layer from the cache and writes byte-identical packed weights.
    model = tiny_vit_file(tmp_path)
    cache = tmp_path / "cache"
    argv = [str(model), "--cache-dir", str(cache), *FAST]
    assert main([*argv, "-o", str(tmp_path / "first")]) == 0
    assert main([*argv, "-o", str(tmp_path / "second")]) == 0
    first, second = (json.loads((tmp_path / d / "report.json").read_text()) for d in ("first", "second"))
    assert not any(layer["solver"]["cache_hit"] for layer in first["layers"])
    assert all(layer["solver"]["cache_hit"] for layer in second["layers"])
    assert ((tmp_path / "first" / "layers.bqq.safetensors").read_bytes()
            == (tmp_path / "second" / "layers.bqq.safetensors").read_bytes())
    assert main([*argv[:1], "--no-cache", *FAST, "-o", str(tmp_path / "third")]) == 0
    third = json.loads((tmp_path / "third" / "report.json").read_text())
    assert not any(layer["solver"]["cache_hit"] for layer in third["layers"])

def test_export_onnx_target_trt_writes_device_bundle(tmp_path):
    path = tmp_path / "mlp.onnx"
    linear_onnx(path)
    out = tmp_path / "trt"
    assert main([str(path), "--target", "trt", "--build-on-device", "-o", str(out), *FAST]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["engine"]["status"] == "bundle" and "--build-on-device" in report["engine"]["message"]
    assert (out / "model.trt.fp16.onnx").is_file()


@pytest.mark.parametrize("name, content, extra, message", [
    ("bad.onnx", b"\x08\x07garbage", [], "not a valid ONNX model"),
    ("model.xyz", b"data", [], "unsupported model file extension"),
    ("good.onnx", None, ["--input-shape", "2x5"], "does not fit input 'x'"),
    ("good.onnx", None, ["--input-shape", "2by5"], "expected DIMS"),
    ("vit.pt", None, ["--input-shape", "2x3x8x8"], "does not run on input shape"),
])
def test_bad_input_exits_2_with_one_line_and_no_bundle(tmp_path, capsys, name, content, extra, message):
    path = tmp_path / name
    if name == "good.onnx":
        linear_onnx(path)
    elif name == "vit.pt":
        path = tiny_vit_file(tmp_path)
    else:
        path.write_bytes(content)
    out = tmp_path / "out"
    assert main([str(path), "-o", str(out), *FAST, *extra]) == 2
    assert message in _one_line_error(capsys.readouterr().err)
    assert not out.exists() and _leftovers(tmp_path) == []


def test_unwritable_output_parent_exits_2(tmp_path, capsys):
    path = tmp_path / "mlp.onnx"
    linear_onnx(path)
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    assert main([str(path), "-o", str(blocker / "bundle"), *FAST]) == 2
    assert "is not a directory" in _one_line_error(capsys.readouterr().err)
    if os.geteuid() != 0:  # root writes anywhere: the permission case needs a normal user
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        assert main([str(path), "-o", str(locked / "bundle"), *FAST]) == 2
        assert "not writable" in _one_line_error(capsys.readouterr().err)
        assert list(locked.iterdir()) == []


def test_output_that_cannot_be_created_exits_2_naming_it(tmp_path, capsys, monkeypatch):
    # os.access can approve a parent where creation still fails (root on /proc, a read-only
    # mount): the error must name OUT, not the temporary directory the bundle is built in.
    path = tmp_path / "mlp.onnx"
    linear_onnx(path)

    def refuse(*args, **kwargs):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr("tempfile.mkdtemp", refuse)
    out = tmp_path / "bundle"
    assert main([str(path), "-o", str(out), *FAST]) == 2
    assert _one_line_error(capsys.readouterr().err) == \
        f"bqq-export: error: {out}: cannot create it (Read-only file system)"
    assert not out.exists()


def test_bad_calibration_file_exits_2(tmp_path, capsys):
    import numpy as np

    path = tmp_path / "mlp.onnx"
    linear_onnx(path)
    np.savez(tmp_path / "calib.npz", np.zeros((4, 7), np.float32))
    assert main([str(path), "-o", str(tmp_path / "out"), *FAST, "--calib",
                 str(tmp_path / "calib.npz")]) == 2
    assert "has shape [4, 7], the model expects ['n', 48]" in _one_line_error(capsys.readouterr().err)
    assert not (tmp_path / "out").exists()


def test_console_script_subprocess(tmp_path):
    script = shutil.which("bqq-export", path=str(Path(sys.executable).parent))
    assert script, "bqq-export console script is not installed (pip install -e .)"
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"\x00\x01 not onnx")
    proc = subprocess.run([script, str(bad), "-o", str(tmp_path / "out")], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "not a valid ONNX model" in proc.stderr
    help_text = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=120).stdout
    assert "examples:" in help_text and "--allow-pickle" in help_text


def test_warnings_are_summarised_once_with_what_they_concern(tmp_path, capsys):
    # A mask constant beyond the fp16 range (-1e9, as attention masks are written) is clipped
    # in model.trt.fp16.onnx: one line in the summary naming the tensor, nothing in between.
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"], name="fc"),
         helper.make_node("Add", ["h", "mask"], ["y"], name="masked")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 32])],
        [numpy_helper.from_array(rng.standard_normal((32, 32)).astype(np.float32), "w"),
         numpy_helper.from_array(np.where(np.arange(32) < 16, 0, -1e9).astype(np.float32)[None], "mask")])
    path = tmp_path / "masked.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    assert main([str(path), "-o", str(tmp_path / "out"), "--quality", "fast", "--group-size", "16",
                 "--no-validate"]) == 0
    out, err = capsys.readouterr()
    assert "clipped" not in err
    (line,) = [line for line in out.splitlines() if "clipped" in line]
    assert "fp16 file: values beyond the fp16 range are clipped (concerns mask)" in line
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["warnings"] == [line.strip().lstrip("- ")]
    assert "## Warnings" in (tmp_path / "out" / "report.md").read_text()
