"""The TensorRT plugin library (BQQMatMul and BQQGather, docs/TENSORRT.md).

No TensorRT runtime exists in CI, so every plugin source of both plugins is compiled with
-Werror against the TensorRT headers named in BQQ_TRT_INCLUDE_DIRS (os.pathsep-separated
include/ folders; skipped when unset). The plugins' constants are checked against their
contract files in tests/test_contract.py."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _include_dirs() -> list[str]:
    value = os.environ.get("BQQ_TRT_INCLUDE_DIRS", "")
    return [d for d in value.split(os.pathsep) if d]


@pytest.mark.slow
@pytest.mark.parametrize("include_dir", _include_dirs() or [None])
def test_plugin_compiles_against_tensorrt_headers(include_dir, tmp_path):
    if include_dir is None:
        pytest.skip("set BQQ_TRT_INCLUDE_DIRS to TensorRT include/ folders to compile-check the plugin")
    if shutil.which("cmake") is None:
        pytest.skip("cmake is not installed")
    if shutil.which("nvcc") is None and not Path("/usr/local/cuda/bin/nvcc").exists():
        pytest.skip("nvcc is not installed (the plugin needs CUDA's headers)")
    build = tmp_path / "build"
    result = subprocess.run([str(REPO / "tools" / "trt_compile_check.sh"), include_dir, str(build)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "Built target bqq_trt_plugin" in result.stdout
    objects = {p.name for p in build.rglob("*.o")}
    for source in ("BQQPluginCommon", "BQQMatMulPlugin", "BQQMatMulPluginCreator", "BQQGatherPlugin",
                   "BQQGatherPluginCreator", "BQQPluginLibrary", "BQQPluginStaticRegistration"):
        assert f"{source}.cpp.o" in objects, f"{source}.cpp was not compiled"
