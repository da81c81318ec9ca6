"""The TensorRT plugin's side of the BQQMatMul contract (docs/TENSORRT.md).

No TensorRT runtime exists in CI, so two things are checked: the plugin's C++ constants agree
with what the ONNX exporter writes (always), and the plugin compiles with -Werror against the
TensorRT headers named in BQQ_TRT_INCLUDE_DIRS (os.pathsep-separated include/ folders; skipped
when unset)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from bqq_deploy.export import function

REPO = Path(__file__).resolve().parents[1]
PLUGIN_HEADER = REPO / "plugins" / "bqq_matmul" / "BQQMatMulPlugin.h"


def _cpp_string_constant(source: str, name: str) -> str:
    match = re.search(rf'constexpr char const\* {name} = "([^"]*)";', source)
    assert match, f"{name} not found in {PLUGIN_HEADER.name}"
    return match.group(1)


def test_plugin_constants_match_the_onnx_exporter():
    source = PLUGIN_HEADER.read_text()
    assert _cpp_string_constant(source, "kPluginName") == function.OP_TYPE
    assert _cpp_string_constant(source, "kPluginVersion") == function.PLUGIN_VERSION
    assert _cpp_string_constant(source, "kPluginNamespace") == function.PLUGIN_NAMESPACE
    # The creator lists exactly these fields, in this order; the parser drops any attribute
    # the creator does not list, so a renamed attribute would silently vanish.
    block = re.search(r"kFieldNames\{(.*?)\};", source, re.S)
    assert block, "kFieldNames not found"
    assert tuple(re.findall(r'"([a-z_]+)"', block.group(1))) == function.INT_ATTRIBUTES


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
    result = subprocess.run([str(REPO / "tools" / "trt_compile_check.sh"), include_dir, str(tmp_path / "build")],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "Built target bqq_trt_plugin" in result.stdout
