"""A short seeded pass of every fuzz harness (fuzz/README.md; the long run is
fuzz/run_long.py). The native harnesses run through fuzz/driver.cpp built with gcc (or any
C++ compiler) with ASan + UBSan; the Python targets through fuzz/pyfuzz.py. Any finding fails
here with the input's file and the report."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FUZZ = REPO / "fuzz"
sys.path.insert(0, str(FUZZ))
import pyfuzz  # noqa: E402
import seeds  # noqa: E402

BUILD = REPO / "build" / "fuzz-smoke"
# Cases per harness: a few seconds each on a 2-core CI machine.
NATIVE_RUNS = {"npy": 3000, "layout": 3000, "plugin_creator": 3000}
PYTHON_RUNS = 60
TRT_INCLUDE = os.environ.get("BQQ_TRT_INCLUDE_DIR", "")


def _cxx() -> str | None:
    for name in (os.environ.get("CXX", ""), "g++", "c++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


@pytest.fixture(scope="module")
def native_build(tmp_path_factory) -> Path:
    cxx = _cxx()
    cmake = shutil.which("cmake") or str(Path(sys.executable).parent / "cmake")
    if cxx is None or not Path(cmake).exists():
        pytest.skip("no C++ compiler or cmake: the native fuzz harnesses are not built")
    probe = tmp_path_factory.mktemp("probe")
    (probe / "a.cpp").write_text("int main() { return 0; }\n")
    if subprocess.run([cxx, "-fsanitize=address,undefined", str(probe / "a.cpp"), "-o", str(probe / "a")],
                      capture_output=True).returncode != 0:
        pytest.skip(f"{cxx} cannot link ASan + UBSan programs (sanitizer runtime missing)")
    (BUILD / "fuzz_plugin_creator").unlink(missing_ok=True)  # built only with TensorRT headers
    configure = [cmake, "-S", str(FUZZ), "-B", str(BUILD), f"-DCMAKE_CXX_COMPILER={cxx}",
                 "-DBQQ_FUZZ_ENGINE=driver", "-DBQQ_FUZZ_OPT=-O0", f"-DTensorRT_INCLUDE_DIR={TRT_INCLUDE}"]
    for command in (configure, [cmake, "--build", str(BUILD), "-j", "2"]):
        proc = subprocess.run(command, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    proc = subprocess.run([sys.executable, str(FUZZ / "seeds.py"), str(BUILD / "seeds"), *NATIVE_RUNS],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return BUILD


@pytest.mark.parametrize("harness", list(NATIVE_RUNS))
def test_native_harness_seeded_pass(native_build, harness, tmp_path):
    if harness == "plugin_creator" and not TRT_INCLUDE:
        pytest.skip("fuzz_plugin_creator needs TensorRT headers: set BQQ_TRT_INCLUDE_DIR to TensorRT's include/")
    binary = native_build / f"fuzz_{harness}"
    if not binary.is_file():
        assert harness == "plugin_creator", f"{binary} was not built"
        pytest.skip("fuzz_plugin_creator was not built: it needs the CUDA toolkit's headers and cudart_static")
    command = [str(binary), f"-runs={NATIVE_RUNS[harness]}", "-seed=0", "-timeout=30",
               f"-artifact_prefix={tmp_path}/", str(native_build / "seeds" / harness)]
    if harness in seeds.DICTIONARIES:
        command.insert(1, f"-dict={seeds.DICTIONARIES[harness]}")
    proc = subprocess.run(command, capture_output=True, text=True, errors="replace", timeout=300)
    status, output = proc.returncode, proc.stdout + proc.stderr
    inputs = sorted(p.name for p in tmp_path.iterdir())
    assert status == 0, f"fuzz_{harness} failed on {inputs}:\n{output[-4000:]}"
    assert f"Done {NATIVE_RUNS[harness] + len(list((native_build / 'seeds' / harness).iterdir()))} runs" in output


@pytest.fixture(scope="module")
def python_results(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("pyfuzz")
    proc = subprocess.run([sys.executable, str(FUZZ / "pyfuzz.py"), "--runs", str(PYTHON_RUNS), "--seed", "0",
                           "--artifacts", str(out / "artifacts"), "--json", str(out / "summary.json")],
                          capture_output=True, text=True, timeout=900)
    assert (out / "summary.json").is_file(), proc.stdout[-3000:] + proc.stderr[-3000:]
    return {r["target"]: r for r in json.loads((out / "summary.json").read_text())["results"]}


@pytest.mark.parametrize("target", pyfuzz.TARGET_NAMES)
def test_python_target_seeded_pass(python_results, target):
    result = python_results[target]
    assert result["cases"] == result["seeds"] + PYTHON_RUNS
    # The seeds are valid inputs: the reader must take at least those.
    assert result["accepted"] >= 1
    found = result["findings"]
    assert not found, "\n\n".join(f"{sig} x{f['count']}: {f['message']}\nreproducer: {f['reproducer']}\n"
                                  f"{f['traceback']}" for sig, f in found.items())
