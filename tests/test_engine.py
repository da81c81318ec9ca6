"""bqq_deploy.trt without TensorRT: input profiles, the on-device bundle (sources copied,
build script, README section), plugin library search, manifest safety checks; and, marked
`tensorrt`, a real engine build where TensorRT and a GPU exist."""

from __future__ import annotations

import filecmp
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from bqq_deploy import trt
from bqq_deploy.bundle import Bundle, BuildSettings
from bqq_deploy.cli import build as build_cli
from bqq_deploy.errors import EngineError, EngineMismatch, InputError
from bqq_deploy.specs import DEFAULT_MAX_BATCH, profiles
from bqq_deploy.trt import plugin as trt_plugin

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None
REPO = trt.repo_root()


def tiny_trt_onnx(path):
    """Stand-in for model.trt.onnx where only the file's presence matters."""
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
                              [numpy_helper.from_array(np.ones((4, 3), np.float32), "w")])
    onnx.save(helper.make_model(graph), str(path))


SPECS = [{"name": "x", "shape": ["batch", 4], "dtype": "float32"}]  # as bqq-export passes them


def test_input_profiles_from_export_specs_and_ranges():
    (p,) = profiles(SPECS)
    assert (p.min, p.opt, p.max) == ((1, 4), (1, 4), (DEFAULT_MAX_BATCH, 4))
    (p,) = profiles(SPECS, max_batch=32)
    assert p.max == (32, 4) and p.dtype == "float32"
    (p,) = profiles([{"name": "ids", "min": [1, 128], "opt": [4, 128], "max": [16, 128],
                                   "dtype": "int64"}], max_batch=2)
    assert (p.min, p.opt, p.max, p.dtype) == ((1, 128), (2, 128), (2, 128), "int64")
    # A numeric batch (--input-shape 2x4) is the size to optimise for; the batch stays
    # dynamic as docs/CLI.md promises, so --max-batch still sets the upper end.
    (p,) = profiles([{"name": "x", "shape": [2, 4]}], max_batch=16)
    assert (p.min, p.opt, p.max) == ((1, 4), (2, 4), (16, 4))
    # Another dynamic dim gets the default range (a sequence: 1..512, opt 128).
    (p,) = profiles([{"name": "x", "shape": [1, "seq"]}])
    assert (p.min, p.opt, p.max) == ((1, 1), (1, 128), (DEFAULT_MAX_BATCH, 512))
    with pytest.raises(ValueError, match="min <= opt <= max"):
        profiles([{"name": "x", "min": [4], "opt": [2], "max": [8]}])


def _bundle(tmp_path):
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    tiny_trt_onnx(bundle / Bundle.TRT_ONNX)
    tiny_trt_onnx(bundle / Bundle.TRT_ONNX_FP16)
    (bundle / "README.md").write_text("# My bundle\n\nNotes kept by the writer.\n")
    return bundle


def test_device_bundle_is_written_when_building_on_device(tmp_path):
    bundle = _bundle(tmp_path)
    result = trt.export_trt(bundle, input_specs=SPECS, build_on_device=True, workspace_mb=512,
                            max_batch=4)
    assert result.status == "bundle" and "./build_engine.sh" in result.message
    assert not (bundle / Bundle.ENGINE).exists()
    plugin = bundle / "plugin"
    for rel in ("CMakeLists.txt", "cmake/FindTensorRT.cmake", "plugins/bqq_matmul/CMakeLists.txt",
                "plugins/bqq_matmul/bqq_matmul.h", "plugins/bqq_matmul/trt_plugin.cmake",
                "runtime/CMakeLists.txt", "runtime/src/npy.cpp"):
        assert filecmp.cmp(plugin / rel, REPO / rel, shallow=False), rel
    assert not list(plugin.rglob("build")) and not list(plugin.rglob("*.so"))
    stored = json.loads((bundle / Bundle.BUILD_SETTINGS).read_text())
    assert stored == {"inputs": [{"name": "x", "shape": ["batch", 4], "dtype": "float32",
                                  "min": [1, 4], "opt": [1, 4], "max": [4, 4]}], "workspace_mb": 512}
    assert Bundle(bundle).read_build_settings().inputs == profiles(SPECS, max_batch=4)
    script = bundle / Bundle.BUILD_SCRIPT
    assert os.access(script, os.X_OK)
    assert subprocess.run(["sh", "-n", str(script)]).returncode == 0
    text = (bundle / "README.md").read_text()
    assert text.startswith("# My bundle\n\nNotes kept by the writer.")
    assert text.count(trt.README_BEGIN) == 1
    assert ("trtexec --onnx=model.trt.fp16.onnx --dynamicPlugins=plugin/build/plugins/bqq_matmul/"
            "libbqq_trt_plugin.so --stronglyTyped --minShapes=x:1x4 --optShapes=x:1x4 "
            "--maxShapes=x:4x4 --saveEngine=model.engine") in text
    assert "bqq-build . --plugin plugin/build/plugins/bqq_matmul/libbqq_trt_plugin.so" in text
    # Writing again replaces the section instead of appending a second one.
    trt.export_trt(bundle, input_specs=SPECS, build_on_device=True, max_batch=8)
    text = (bundle / "README.md").read_text()
    assert text.count(trt.README_BEGIN) == 1 and "--maxShapes=x:8x4" in text


@pytest.mark.skipif(HAS_TENSORRT, reason="checks the fallback taken where TensorRT is not installed")
def test_without_tensorrt_export_trt_falls_back_to_the_bundle(tmp_path):
    bundle = _bundle(tmp_path)
    result = trt.export_trt(bundle, input_specs=SPECS, build_on_device=False)
    assert result.status == "bundle" and "TensorRT is not installed here" in result.message
    assert (bundle / Bundle.BUILD_SCRIPT).is_file() and not (bundle / Bundle.ENGINE).exists()


def test_bundled_sources_configure_with_cmake(tmp_path):
    """The copied tree is a working CMake project (CPU-only configure: seconds)."""
    if shutil.which("cmake") is None:
        pytest.skip("cmake not installed")
    bundle = _bundle(tmp_path)
    trt.write_device_kit(Bundle(bundle), BuildSettings(profiles(SPECS)))
    proc = subprocess.run(["cmake", "-S", str(bundle / "plugin"), "-B", str(tmp_path / "b"),
                           "-DBQQ_BUILD_CUDA=OFF"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_missing_sources_and_onnx_are_named(tmp_path):
    bundle = _bundle(tmp_path)
    with pytest.raises(EngineError, match=f"plugin sources not found under {tmp_path}"):
        trt.write_device_kit(Bundle(bundle), BuildSettings(profiles(SPECS)), source_root=tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="model.trt.fp16.onnx or model.trt.onnx"):
        trt.export_trt(empty, input_specs=SPECS, build_on_device=True)


def test_plugin_search_names_every_path(tmp_path, monkeypatch):
    monkeypatch.setenv(trt.PLUGIN_ENV, f"{tmp_path / 'a'}{os.pathsep}{tmp_path / 'b'}")
    monkeypatch.setattr(trt_plugin, "repo_root", lambda: tmp_path / "repo")
    with pytest.raises(EngineError) as info:
        trt.find_plugin_library(bundle_dir=tmp_path / "bundle")
    message = str(info.value)
    for path in (tmp_path / "a", tmp_path / "b", tmp_path / "bundle/plugin/build/plugins/bqq_matmul",
                 tmp_path / "repo/build/plugins/bqq_matmul"):
        assert str(path / trt.PLUGIN_LIBRARY) in message
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / trt.PLUGIN_LIBRARY).write_bytes(b"\x7fELF")
    assert trt.find_plugin_library() == (tmp_path / "b" / trt.PLUGIN_LIBRARY).resolve()
    with pytest.raises(EngineError, match="nope.so does not exist"):
        trt.find_plugin_library(tmp_path / "nope.so")


@pytest.fixture
def manifest_and_plugin(tmp_path):
    plugin = tmp_path / trt.PLUGIN_LIBRARY
    plugin.write_bytes(b"plugin build 1")
    manifest = {"manifest_version": trt.MANIFEST_VERSION, "tensorrt_version": "10.3.0.30",
                "gpu": {"name": "Orin", "compute_capability": "8.7"},
                "plugin": {"library": plugin.name, "sha256": hashlib.sha256(b"plugin build 1").hexdigest()}}
    return manifest, plugin


ORIN = {"name": "Orin", "compute_capability": "8.7"}


def test_manifest_matching_this_device_passes(manifest_and_plugin):
    manifest, plugin = manifest_and_plugin
    trt.check_manifest(manifest, plugin_path=plugin, trt_version="10.3.0.26", device=ORIN)


@pytest.mark.parametrize("change, trt_version, device, expected", [
    ("trt", "10.7.0", ORIN, "engine was built with TensorRT 10.3.0.30, this is TensorRT 10.7.0"),
    ("cc", "10.3.0", {"name": "NVIDIA H100", "compute_capability": "9.0"},
     "built for compute capability 8.7 (Orin), this GPU is NVIDIA H100 with compute capability 9.0"),
    ("name", "10.3.0", {"name": "Orin Nano", "compute_capability": "8.7"},
     "engine was built on a Orin, this GPU is a Orin Nano"),
    ("plugin", "10.3.0", ORIN, "is not the one the engine was built with"),
])
def test_manifest_mismatch_says_which_and_what_to_do(manifest_and_plugin, change, trt_version, device,
                                                     expected):
    manifest, plugin = manifest_and_plugin
    if change == "plugin":
        plugin.write_bytes(b"plugin build 2")
    with pytest.raises(EngineMismatch) as info:
        trt.check_manifest(manifest, plugin_path=plugin, trt_version=trt_version, device=device)
    assert expected in str(info.value)
    assert str(info.value).endswith(trt.REBUILD_HINT)


@pytest.mark.skipif(HAS_TENSORRT, reason="checks bqq-build's message where TensorRT is missing")
def test_bqq_build_without_tensorrt_exits_2(tmp_path, capsys):
    bundle = _bundle(tmp_path)
    assert build_cli.main([str(bundle)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bqq-build: error: TensorRT's Python package is not importable")
    assert build_cli.main([str(tmp_path / "nothing")]) == 2


@pytest.mark.tensorrt
@pytest.mark.gpu
@pytest.mark.skipif(not HAS_TENSORRT, reason="TensorRT Python package not installed")
def test_engine_build_run_and_manifest_on_this_device(tmp_path):
    """Real TensorRT: export a small model, build its engine with the plugin, compare to ORT."""
    import torch

    from bqq_deploy import runtime
    from bqq_deploy.config import BQQConfig
    from bqq_deploy.export import ExportOptions, export_bundle, load_model

    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    try:
        plugin = trt.find_plugin_library()
    except EngineError as exc:
        pytest.skip(f"plugin library not built: {exc}")
    model = tmp_path / "mlp.onnx"
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="fc")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 32])],
                              [numpy_helper.from_array(
                                  np.random.default_rng(0).standard_normal((64, 32)).astype(np.float32), "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(model))
    bundle = tmp_path / "bundle"
    export_bundle(load_model(model), bundle, ExportOptions(
        config=BQQConfig(bits=2, group_size=16, steps=0), target="trt", progress=False, bench_iters=1))
    manifest = trt.build_engine(bundle, plugin_path=plugin, precision="fp32", max_batch=4)
    assert manifest["plugin"]["sha256"] == trt.sha256_file(plugin)
    trt_backend = runtime.load(bundle / Bundle.ENGINE, plugin_path=plugin)
    ort_backend = runtime.load(bundle / "model.onnx", providers=["CPUExecutionProvider"])
    feeds = [{"x": np.random.default_rng(i).standard_normal((3, 64)).astype(np.float32)} for i in range(2)]
    # Same packed weights, fp32 both sides: only summation order differs (docs/FORMAT.md 1e-5).
    result = runtime.validate(ort_backend, trt_backend, feeds,
                              runtime.Tolerances(min_cosine=0.99999, max_rel=1e-4, min_top1=None))
    assert result.passed, result.failures
