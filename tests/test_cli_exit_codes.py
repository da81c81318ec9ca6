"""Exit status of every command, through a real subprocess for each path: 0 ok, 1 a failed
check (the console says FAILED), 2 bad input - one line on stderr, never a traceback; and
bqq-export's bad flags and files, in process, each exiting 2 with one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from bqq_deploy.cli.export import main as export_main
from bqq_deploy.cli.validate import main as validate_main
from test_export import linear_onnx, tiny_vit_file

REPO = Path(__file__).resolve().parents[1]
FAST = ["--quality", "fast", "--bits", "2", "--group-size", "16", "--steps", "0", "--no-validate"]


def cli(tool: str, *args) -> tuple[int, str, str]:
    """python -m bqq_deploy.cli.<tool> args, with this checkout first on the path."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-m", f"bqq_deploy.cli.{tool}", *map(str, args)],
                          capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.returncode, proc.stdout, proc.stderr


def one_line(err: str, prog: str, kind: str = "error") -> str:
    """The one error line, last on stderr (progress messages may come before it)."""
    lines = err.strip().splitlines()
    errors = [line for line in lines if line.startswith(f"{prog}: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], err
    assert errors[0].startswith(f"{prog}: {kind}: "), err
    return errors[0]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """The MLP of test_export (x [n, 48] -> y [n, 16]) with 24 real rows of validation data."""
    root = tmp_path_factory.mktemp("exit")
    linear_onnx(root / "mlp.onnx")
    rng = np.random.default_rng(0)
    np.savez(root / "val.npz", x=rng.standard_normal((24, 48)).astype(np.float32))
    return root


def test_bqq_export_exits_0_then_1_when_a_tolerance_fails(data, tmp_path):
    code, out, err = cli("export", data / "mlp.onnx", "-o", tmp_path / "ok", *FAST,
                         "--val-data", data / "val.npz", "--min-cosine", "0.5")
    assert code == 0, err
    assert "verdict" in out and "PASSED: accuracy against the original within the tolerances" in out
    # the same export with a tolerance no 2-bit model meets: exit 1, FAILED, report written
    code, out, err = cli("export", data / "mlp.onnx", "-o", tmp_path / "fail", *FAST,
                         "--val-data", data / "val.npz", "--max-rel", "1e-9")
    assert code == 1
    assert "FAILED" in out
    line = one_line(err, "bqq-export", "check failed")
    assert "verdict FAILED: against the original: y: max relative error" in line and "> 1e-09" in line
    report = json.loads((tmp_path / "fail" / "report.json").read_text())
    assert report["verdict"]["status"] == "FAILED" and not report["verdict"]["passed"]
    assert "**Verdict: FAILED**" in (tmp_path / "fail" / "report.md").read_text()


def test_bqq_export_exits_2_on_bad_input(data, tmp_path):
    # (every other bad flag and file: in process, below)
    code, out, err = cli("export", data / "mlp.onnx", "-o", tmp_path / "o", *FAST, "--min-top1", "0.9")
    assert code == 2 and out == ""
    assert "need real inputs" in one_line(err, "bqq-export")
    assert not (tmp_path / "o").exists()


@pytest.fixture(scope="module")
def bundle(data):
    out = data / "bundle"
    code, _, err = cli("export", data / "mlp.onnx", "-o", out, *FAST, "-q")
    assert code == 0, err
    return out


def test_bqq_validate_exit_codes(data, bundle, tmp_path):
    x = np.random.default_rng(1).standard_normal((4, 48)).astype(np.float32)
    np.savez(tmp_path / "batch.npz", x=x)
    common = ["--reference", data / "mlp.onnx", "--inputs", tmp_path / "batch.npz", "--iters", "2",
              "--warmup", "0", "-q"]
    code, _, err = cli("validate", bundle, "-o", tmp_path / "ok", *common, "--min-cosine", "0.1")
    assert code == 0, err
    code, _, err = cli("validate", bundle, "-o", tmp_path / "fail", *common, "--min-cosine", "1.5")
    assert code == 1 and "cosine similarity" in one_line(err, "bqq-validate", "check failed")
    code, _, err = cli("validate", tmp_path / "absent", "-o", tmp_path / "x")
    assert code == 2 and "no such bundle" in one_line(err, "bqq-validate")


def test_bqq_validate_never_invents_integer_inputs(tmp_path, capsys):
    # ids [n, 4] int64 -> Gather from a table -> MatMul: random token ids would be made-up
    # data, so --random refuses and asks for real inputs.
    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "ids"], ["e"]), helper.make_node("MatMul", ["e", "w"], ["y"])],
        "g", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["n", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4, 8])],
        [numpy_helper.from_array(rng.standard_normal((20, 8)).astype(np.float32), "table"),
         numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), "w")])
    path = tmp_path / "ids.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    code = validate_main([str(path), "--reference", str(path), "-o", str(tmp_path / "r"), "--random", "2"])
    err = capsys.readouterr().err
    assert code == 2
    assert "ids take integers" in one_line(err, "bqq-validate") and "--inputs" in err


@pytest.mark.skipif(__import__("importlib").util.find_spec("tensorrt") is not None,
                    reason="checks bqq-build's exit status where TensorRT is missing")
def test_bqq_build_exits_2_without_tensorrt(bundle):
    code, _, err = cli("build", bundle)
    assert code == 2 and "TensorRT" in one_line(err, "bqq-build")


@pytest.mark.parametrize("args, message", [
    ([], "the following arguments are required: -o/--output"),
    (["-o", "OUT", "--target", "xyz"], "invalid choice: 'xyz'"),
    (["-o", "OUT", "--bits", "0"], "bits must be in 1..16"),
    (["-o", "OUT", "--group-size", "3x"], "is not G or GRxGC"),
    (["-o", "OUT", "--group-size", "100000"], "group_size must be in 1..4096"),
    (["-o", "OUT", "--steps", "-1"], "steps must be >= 0"),
    (["-o", "OUT", "--device", "nonsense"], "is not a torch device"),
    (["-o", "OUT", "--shapes", "x:1x48/2x48"], "expected NAME:MIN/OPT/MAX"),
    (["-o", "OUT", "--shapes", "y:1x48/2x48/4x48"], "no input 'y'"),
    (["-o", "OUT", "--shapes", "x:1x47/2x47/4x47"], "dim 1 is fixed at 48"),
    (["-o", "OUT", "--shapes", "x:1/2/4"], "1 dims given, the input has 2"),
    (["-o", "OUT", "--shapes", "x:99999999999x48"], "2**31"),
    (["-o", "OUT", "--min-cosine", "abc"], "expected a number or 'off'"),
    (["-o", "OUT", "--min-cosine", "nan"], "expected a number, got nan"),
    (["-o", "OUT", "--val-data", "absent.npz"], "--val-data file not found"),
    (["-o", "OUT", "--val-data", "garbage.npz"], "not a readable .npz file"),
    (["-o", "OUT", "--val-data", "rank3.npz"], "has shape [6, 48, 2], the model expects"),
    (["-o", "OUT", "--val-data", "nan.npz"], "NaN or infinite"),
    (["-o", "OUT", "--calib", "empty.npz"], "non-empty first (batch) dimension"),
    (["-o", "OUT", "--exclude", "*"], "no linear layer with a constant weight to quantise"),
    (["-o", "OUT", "--cache-dir", "garbage.npz"], "exists and is not a directory"),
    (["-o", "OUT", "--build-on-device"], "only applies to --target trt"),
    (["-o", "OUT", "-q", "-v"], "not allowed with argument"),
    (["-o", "garbage.npz"], "exists and is not a directory"),
])
def test_bqq_export_bad_flags_and_files_exit_2_with_one_line(tmp_path, capsys, args, message):
    linear_onnx(tmp_path / "m.onnx")
    (tmp_path / "garbage.npz").write_bytes(b"not a zip")
    np.savez(tmp_path / "rank3.npz", x=np.ones((6, 48, 2), np.float32))
    np.savez(tmp_path / "nan.npz", x=np.full((4, 48), np.nan, np.float32))
    np.savez(tmp_path / "empty.npz", x=np.ones((0, 48), np.float32))
    argv = [str(tmp_path / "m.onnx"), *FAST] + [str(tmp_path / a) if a.endswith(".npz") or a == "OUT"
                                                 else a for a in args]
    try:
        code = export_main(argv)
    except SystemExit as exc:  # argparse's own exit, with our one-line message
        code = exc.code
    assert code == 2
    assert message in one_line(capsys.readouterr().err, "bqq-export")
    assert not (tmp_path / "OUT").exists()


def test_traced_transformer_encoder_fails_with_a_remedy(tmp_path, capsys):
    # torch.onnx cannot export a TorchScript-traced nn.TransformerEncoder (the file keeps no
    # shapes; "transpose for tensor of unknown rank" in MultiheadAttention): one line saying
    # what to do instead.
    import torch

    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
    model = torch.nn.TransformerEncoder(layer, 1, enable_nested_tensor=False).eval()
    path = tmp_path / "encoder.pt"
    torch.jit.trace(model, torch.randn(2, 5, 16), check_trace=False).save(str(path))
    code = export_main([str(path), "-o", str(tmp_path / "o"), "--input-shape", "src:2x5x16", *FAST])
    assert code == 2
    line = one_line(capsys.readouterr().err, "bqq-export")
    assert "torch.onnx.export failed" in line and "bqq_deploy.export_model(model, args, out)" in line
    # the Python model exports (the in-memory path)
    from bqq_deploy import BQQConfig, export_model

    report = export_model(model, torch.randn(2, 5, 16), tmp_path / "ok",
                          config=BQQConfig(bits=2, group_size=16, steps=0))
    assert report.passed and len(report.layers) == 4
