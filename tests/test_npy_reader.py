"""The C++ .npy reader/writer (runtime/src/npy.cpp) through the bqq-npy-info tool built by
CMake: NumPy's own files read back exactly, malformed files give a clear error and exit 1,
never a crash."""

from __future__ import annotations

import io
import os
import re
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
TOOL = Path(os.environ.get("BQQ_NPY_INFO", REPO / "build" / "runtime" / "bqq-npy-info"))
pytestmark = pytest.mark.skipif(not TOOL.is_file(), reason=f"{TOOL} not built (run `make native`)")


def info(path, *extra) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(TOOL), str(path), *extra], capture_output=True, text=True, timeout=30)
    assert proc.returncode >= 0, f"killed by signal {-proc.returncode}: {proc.stderr}"
    return proc


def npy_bytes(array: np.ndarray, version=(1, 0)) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, array, version=version)
    return buffer.getvalue()


def raw_npy(header: str, data: bytes = b"", major: int = 1, minor: int = 0) -> bytes:
    """A .npy image with an arbitrary header text (for malformed files)."""
    text = header.encode("latin1") + b"\n"
    length = struct.pack("<H" if major == 1 else "<I", len(text))
    return b"\x93NUMPY" + bytes([major, minor]) + length + text + data


@pytest.mark.parametrize("dtype", ["<f4", "<f2", "<f8", "<i8", "<i4", "<i2", "|i1", "|u1", "<u2", "<u4", "|b1"])
def test_numpy_files_read_exactly(tmp_path, dtype):
    rng = np.random.default_rng(0)
    array = (rng.standard_normal((3, 5)) * 20).astype(dtype)
    path = tmp_path / "a.npy"
    np.save(path, array)
    proc = info(path)
    assert proc.returncode == 0, proc.stderr
    match = re.fullmatch(r".*: descr=(\S+) shape=\(3, 5\) count=15 bytes=(\d+) sum=(\S+)", proc.stdout.strip())
    assert match, proc.stdout
    assert match[1] == ("|" + dtype[1:] if np.dtype(dtype).itemsize == 1 else dtype)
    assert int(match[2]) == array.nbytes
    # The tool sums in double, element by element; the values are exact in double, so only
    # the summation order (numpy's pairwise vs sequential) differs: 1e-12 relative.
    assert float(match[3]) == pytest.approx(array.astype(np.float64).sum(), rel=1e-12, abs=1e-9)


@pytest.mark.parametrize("version", [(1, 0), (2, 0), (3, 0)])
@pytest.mark.parametrize("shape", [(), (0, 3), (7,), (2, 3, 4)])
def test_versions_and_shapes_round_trip_through_the_writer(tmp_path, version, shape):
    array = np.arange(int(np.prod(shape)), dtype=np.float32).reshape(shape) - 3.5
    src, dst = tmp_path / "in.npy", tmp_path / "out.npy"
    src.write_bytes(npy_bytes(array, version))
    proc = info(src, "--copy", dst)
    assert proc.returncode == 0, proc.stderr
    back = np.load(dst)
    assert back.dtype == array.dtype and back.shape == array.shape
    np.testing.assert_array_equal(back, array)  # bit-exact copy
    assert (len(dst.read_bytes()) - array.nbytes) % 64 == 0  # data starts 64-byte aligned
    assert not list(tmp_path.glob("*.tmp.*"))


def _good() -> bytes:
    return npy_bytes(np.arange(12, dtype=np.float32).reshape(3, 4))


MALFORMED = {
    "empty": (b"", "bad magic string"),
    "bad_magic": (b"\x93NUMPZ" + _good()[6:], "bad magic string"),
    "magic_only": (b"\x93NUMPY\x01", "truncated before the header length"),
    "version_4": (b"\x93NUMPY\x04\x00" + _good()[8:], "unsupported .npy format version 4.0"),
    "header_past_end": (_good()[:8] + struct.pack("<H", 60000) + _good()[10:], "runs past the end of the file"),
    "huge_header_v2": (b"\x93NUMPY\x02\x00" + struct.pack("<I", 0xFFFFFFF0) + b"{}", "implausibly large"),
    "truncated_data": (_good()[:-3], "needs 48 data bytes, the file holds 45 (truncated)"),
    "extra_data": (_good() + b"\0\0\0\0", "the file holds 52 (extra bytes)"),
    "fortran": (npy_bytes(np.asfortranarray(np.ones((2, 3), np.float32))), "Fortran-order arrays are not supported"),
    "complex": (npy_bytes(np.ones(2, np.complex64)), "unsupported dtype '<c8'"),
    "big_endian": (npy_bytes(np.ones(2, ">f4")), "unsupported dtype '>f4'"),
    "object": (raw_npy("{'descr': '|O', 'fortran_order': False, 'shape': (1,), }", b"\0" * 8), "unsupported dtype '|O'"),
    "size_mismatch": (raw_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (100,), }", b"\0" * 12),
                      "shape (100,) of <f4 needs 400 data bytes, the file holds 12 (truncated)"),
    "overflow": (raw_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (4611686018427387904, 8), }"),
                 "shape overflows"),
    # A zero dim makes the element count 0, but the other dims still overflow int64.
    "overflow behind a zero": (raw_npy("{'descr': '<f4', 'fortran_order': False, "
                                       "'shape': (3037000500, 3037000500, 0), }"), "shape overflows"),
    "count above int64": (raw_npy("{'descr': '|u1', 'fortran_order': False, "
                                  "'shape': (4294967296, 2147483648), }"), "shape overflows"),
    "negative_dim": (raw_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (-1,), }"),
                     "shape entries must be non-negative integers"),
    "unclosed_dict": (raw_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (3,)"), "expected ',' or '}'"),
    "unterminated_string": (raw_npy("{'descr': '<f4"), "unterminated string"),
    "missing_key": (raw_npy("{'descr': '<f4', 'shape': (1,), }", b"\0" * 4), "needs the keys"),
    "repeated_key": (raw_npy("{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (1,), }"),
                     "unexpected or repeated key 'descr'"),
    "bad_bool": (raw_npy("{'descr': '<f4', 'fortran_order': 0, 'shape': (1,), }"), "True or False"),
    "not_a_dict": (raw_npy("[1, 2]"), "expected '{'"),
    "trailing": (raw_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (1,), } x", b"\0" * 4),
                 "trailing characters"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_files_fail_cleanly(tmp_path, case):
    content, message = MALFORMED[case]
    path = tmp_path / f"{case}.npy"
    path.write_bytes(content)
    proc = info(path, "--copy", tmp_path / "never.npy")
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    assert proc.stderr.startswith(f"bqq-npy-info: error: {path}: ")
    assert message in proc.stderr
    assert not (tmp_path / "never.npy").exists()


def test_missing_file_and_usage(tmp_path):
    proc = info(tmp_path / "nope.npy")
    assert proc.returncode == 1 and "cannot open for reading" in proc.stderr
    proc = subprocess.run([str(TOOL)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "usage:" in proc.stderr
