"""The native CPU reference (libbqq_matmul_ref) against the Python reference, the C ABI's
layout and argument checks, and the CUDA library's argument checks (which run before any
CUDA call, so they need no GPU)."""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np
import pytest
import torch

from bqq_deploy import kernels
from bqq_deploy.layout import Layout
from bqq_deploy.nn import reference_matmul


def _library(loader):
    try:
        return loader()
    except kernels.LibraryNotFound as exc:
        pytest.skip(f"native library not built: {exc}")


@pytest.fixture(scope="module")
def ref_lib():
    return _library(kernels.ref_library)


SHAPES = [  # (M, K, g_r, g_c, rank, stacks, bias, rows): tails in M and K, g_r != g_c,
    # rank not a multiple of 32 (20, 40, 3), rank > 32 (two words), p = 1..3
    (64, 64, 64, 64, 32, 2, True, 1),
    (70, 100, 32, 48, 20, 3, True, 5),
    (33, 130, 64, 64, 40, 1, False, 16),
    (5, 9, 8, 4, 3, 2, True, 33),
    (100, 90, 24, 40, 40, 2, False, 17),
    (40, 300, 16, 128, 70, 1, True, 2),
]


@pytest.mark.parametrize("shape", SHAPES)
def test_cpp_reference_matches_python(ref_lib, make_weight, shape):
    *fields, bias, rows = shape
    weight = make_weight(*fields, bias=bias, seed=sum(fields))
    x = torch.randn(rows, weight.in_features, generator=torch.Generator().manual_seed(rows))
    want = reference_matmul(x, weight)
    got = kernels.reference_matmul_cpp(x, weight)
    assert got.shape == want.shape and got.dtype == torch.float32
    # C++ sums in double, Python in fp32 (einsum order): the gap is fp32 rounding of O(K*l)
    # terms, a few hundred ulps of max|y|; a layout mistake is O(max|y|).
    assert (got - want).abs().max() <= 1e-5 * want.abs().max()


def test_cpp_reference_keeps_leading_dims(ref_lib, make_weight):
    weight = make_weight(16, 32, 8, 8, 4, 2)
    x = torch.randn(2, 3, 32)
    assert kernels.reference_matmul_cpp(x, weight).shape == (2, 3, 16)


def test_element_counts_follow_format(ref_lib):
    layout = kernels._Layout(70, 100, 32, 48, 40, 3)
    shapes = Layout(70, 100, 32, 48, 40, 3).shapes()
    assert ref_lib.bqq_y_bits_words(ctypes.byref(layout)) == torch.Size(shapes["y_bits"]).numel()
    assert ref_lib.bqq_z_bits_words(ctypes.byref(layout)) == torch.Size(shapes["z_bits"]).numel()
    assert ref_lib.bqq_scale_count(ctypes.byref(layout)) == torch.Size(shapes["scales"]).numel()


BAD_FIELDS = [("M", 0), ("K", -3), ("group_rows", 4097), ("group_cols", 0), ("rank", 5000),
              ("stacks", 17)]


@pytest.mark.parametrize("field,value", BAD_FIELDS)
def test_layout_check_names_the_field(ref_lib, field, value):
    layout = kernels._Layout(64, 64, 64, 64, 32, 2)
    setattr(layout, field, value)
    assert ref_lib.bqq_layout_check(ctypes.byref(layout)) == kernels.BQQ_ERR_INVALID_ARGUMENT
    assert f"{field}={value}" in ref_lib.bqq_last_error().decode()
    assert ref_lib.bqq_y_bits_words(ctypes.byref(layout)) == 0


def test_reference_rejects_null_pointer(ref_lib):
    layout = kernels._Layout(8, 8, 8, 8, 4, 1)
    x = torch.zeros(1, 8)
    status = ref_lib.bqq_matmul_reference(ctypes.byref(layout), 1, x.data_ptr(), None, None, None,
                                          None, x.data_ptr())
    assert status == kernels.BQQ_ERR_INVALID_ARGUMENT
    assert ref_lib.bqq_last_error().decode() == "y_bits is NULL"


def test_binding_checks_tensor_sizes(ref_lib, make_weight):
    weight = make_weight(16, 32, 8, 8, 4, 2)
    weight.z_bits = weight.z_bits[:1]
    with pytest.raises(kernels.KernelError, match="z_bits: .* layout needs"):
        kernels.reference_matmul_cpp(torch.randn(1, 32), weight)


def test_missing_library_names_path_and_make_target(tmp_path, monkeypatch):
    monkeypatch.setenv("BQQ_LIB_DIR", str(tmp_path))
    kernels.ref_library.cache_clear()
    try:
        with pytest.raises(kernels.LibraryNotFound, match="make native") as info:
            kernels.ref_library()
        assert str(Path(tmp_path)) in str(info.value)
    finally:
        kernels.ref_library.cache_clear()


# --- CUDA library: argument checks happen before any CUDA call -----------------------------

@pytest.fixture(scope="module")
def cuda_lib():
    return _library(kernels.cuda_library)


def _cuda_call(lib, layout, rows, *, x=1 << 20, y=1 << 20, z=1 << 20, s=1 << 20, out=1 << 20,
               dtype=1):
    # Fake, aligned, never-dereferenced addresses: every call here must fail validation.
    return lib.bqq_matmul_cuda(ctypes.byref(layout), rows, dtype, x, y, z, s, None, out, None, 0, None)


@pytest.mark.parametrize("field,value", BAD_FIELDS)
def test_cuda_rejects_bad_layout(cuda_lib, field, value):
    layout = kernels._Layout(64, 64, 64, 64, 32, 2)
    setattr(layout, field, value)
    assert _cuda_call(cuda_lib, layout, 4) == kernels.BQQ_ERR_INVALID_ARGUMENT
    assert f"{field}={value}" in cuda_lib.bqq_last_error().decode()


def test_cuda_rejects_bad_arguments(cuda_lib):
    layout = kernels._Layout(64, 64, 64, 64, 32, 2)
    err = kernels.BQQ_ERR_INVALID_ARGUMENT
    assert _cuda_call(cuda_lib, layout, -1) == err and "rows=-1" in cuda_lib.bqq_last_error().decode()
    assert _cuda_call(cuda_lib, layout, 4, dtype=7) == err and "dtype=7" in cuda_lib.bqq_last_error().decode()
    assert _cuda_call(cuda_lib, layout, 4, z=None) == err
    assert cuda_lib.bqq_last_error().decode() == "z_bits is NULL"
    assert _cuda_call(cuda_lib, layout, 4, x=(1 << 20) + 2, dtype=0) == err
    assert cuda_lib.bqq_last_error().decode() == "x is not 4-byte aligned"
    assert _cuda_call(cuda_lib, layout, 0) == kernels.BQQ_OK  # nothing to do, nothing touched


def test_workspace_follows_the_dense_threshold(cuda_lib):
    """Only the dense path (fp16, rows >= threshold, built with cuBLASLt) needs a workspace:
    W_hat as fp16 plus cuBLASLt's share; the kernels need none."""
    layout = kernels._Layout(300, 520, 64, 64, 32, 2)

    def workspace(rows, dtype=1):
        return cuda_lib.bqq_matmul_cuda_workspace(ctypes.byref(layout), rows, dtype)

    threshold = kernels.dense_min_rows()
    if threshold is None:  # built without cuBLASLt: no dense path at all
        assert workspace(1) == workspace(10**6) == 0
        return
    assert workspace(threshold - 1) == 0 and workspace(threshold, dtype=0) == 0
    assert workspace(threshold) >= 2 * 300 * 520 and workspace(10**6) == workspace(threshold)
    before = kernels.set_dense_min_rows(kernels.DENSE_NEVER)
    portable = kernels.set_portable(False)
    try:
        assert before == threshold and workspace(10**6) == 0
        with pytest.raises(kernels.KernelError, match="dense_min_rows=0 must be >= 1"):
            kernels.set_dense_min_rows(0)
        assert kernels.dense_min_rows() == kernels.DENSE_NEVER  # unchanged by the refused value
        kernels.set_portable(True)  # the portable switch means the SIMT kernels only
        kernels.set_dense_min_rows(1)
        assert workspace(10**6) == 0
    finally:
        kernels.set_portable(portable)
        kernels.set_dense_min_rows(before)
    layout.rank = 0
    assert workspace(10**6) == 0  # invalid layout


def test_cuda_dequantize_and_switch_check_arguments(cuda_lib):
    layout = kernels._Layout(64, 64, 64, 64, 32, 2)
    err = kernels.BQQ_ERR_INVALID_ARGUMENT
    assert cuda_lib.bqq_dequantize_cuda(ctypes.byref(layout), 1 << 20, 1 << 20, 1 << 20, None, None) == err
    assert cuda_lib.bqq_last_error().decode() == "out is NULL"
    layout.rank = 0
    assert cuda_lib.bqq_dequantize_cuda(ctypes.byref(layout), 1 << 20, 1 << 20, 1 << 20, 1 << 20, None) == err
    assert "rank=0" in cuda_lib.bqq_last_error().decode()
    # The portable switch is a plain process-wide flag: set, read back, restore.
    before = cuda_lib.bqq_matmul_cuda_set_portable(1)
    assert cuda_lib.bqq_matmul_cuda_set_portable(before) == 1
    assert cuda_lib.bqq_matmul_cuda_last_path() == 0  # nothing ran on this thread


# --- the tensor-core decode kernel's arithmetic, emulated (bqq_decode.cu cannot run here) ----

def _phase1_bit(nt: int, col: int) -> int:  # bqq_decode.cu phase1_bit: mma column -> bit q
    return 4 * nt + col // 2 + 16 * (col % 2)


def _position(q: int):
    """(convert, alpha, beta) of bit position q in phase 1 (make_phase1): a Z bit becomes the
    fp16 value 1 + v*bit (mantissa positions), v*bit (exponent) or 1 - 2*bit (sign), and
    T = alpha * (D - beta * s) undoes it."""
    pd = 8 + q % 8
    if pd <= 9:
        return (lambda bit: 1 + bit * 2.0 ** (pd - 10)), 2.0 ** (10 - pd), 1.0
    if pd <= 14:
        return (lambda bit: bit * 2.0 ** (2 ** (pd - 10) - 15)), 2.0 ** (15 - 2 ** (pd - 10)), 0.0
    return (lambda bit: 1 - 2 * bit), -0.5, 1.0


@pytest.mark.parametrize("rank", [32, 20])
def test_decode_fixup_arithmetic(rank):
    """One block, stack and word of bqq_decode.cu as each thread (g, t) computes it: the
    phase-1 products D of converted bits, the folded fix-up B2 = (a*alpha)*D + (b*s -
    a*alpha*beta*s) rounded to fp16, this thread's share of sum(T) minus kc, the quad sum at
    the end, and phase 2 on Y bits - against the factored forward of FORMAT.md in float64.
    Bits past the rank are set to garbage and cleared first, as mask_past_rank does."""
    gen = np.random.default_rng(rank)
    gc, nrows, mrows = 64, 16, 64
    x = gen.standard_normal((nrows, gc)).astype(np.float16).astype(np.float64)
    z = gen.integers(0, 2, (32, gc))  # Z(q, c), all 32 positions of the word
    y = gen.integers(0, 2, (mrows, 32))
    z[rank:] = y[:, rank:] = 0  # mask_past_rank (the garbage never reaches the hot loop)
    a, b, c, d = (float(np.float16(v)) for v in gen.standard_normal(4) * 0.1)
    s = np.float32(x.sum(1))  # srow: an mma against ones
    conv = np.array([_position(q)[0](z[q]) for q in range(32)])  # [q, c], exact in fp16
    dmat = np.float32(x @ conv.T)  # [n, q] phase-1 accumulators
    b2 = np.zeros((32, nrows))
    extra = np.zeros(nrows)
    for g in range(8):
        part = np.zeros((4, 2))
        for t in range(4):
            kc = [0.0, 0.0]
            for nt in range(4):
                _, alpha, beta = _position(_phase1_bit(nt, 2 * t))
                fa = np.float32(a * alpha)
                for h in range(2):
                    n = g + 8 * h
                    boff = np.float32(beta * s[n])
                    kc[h] += 2 * alpha * boff
                    fb = np.float32(-fa * boff + np.float32(b * s[n]))
                    for col in (2 * t, 2 * t + 1):
                        q = _phase1_bit(nt, col)
                        b2[q, n] = np.float16(np.float32(fa * dmat[n, q] + fb))
                        part[t, h] += alpha * dmat[n, q]
            for h in range(2):
                part[t, h] -= kc[h]
        for h in range(2):  # the quad sum after the main loop, then + d*s
            extra[g + 8 * h] = c * part[:, h].sum() + d * s[g + 8 * h]
    got = y @ b2 + extra  # phase 2 on {0, 1} Y values, fp32 accumulation in the kernel
    t_exact = x @ z.T  # T = x Z^T, [n, q]
    want = a * y @ t_exact.T + b * np.outer(y.sum(1), s) + (c * t_exact.sum(1) + d * s)[None, :]
    # B2 is rounded to fp16 (2^-11 relative) before phase 2; the rest is fp32.
    tol = 2.0**-10 * (y @ np.abs(b2)) + 1e-5 * np.abs(want).max()
    assert (np.abs(got - want) <= tol).all(), float((np.abs(got - want) - tol).max())
