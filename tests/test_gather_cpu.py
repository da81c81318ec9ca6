"""BQQGather's C++ CPU reference (plugins/bqq_gather, docs/KERNELS.md) against
BQQWeight.dequantize(), its index rules and the argument checks of both C entry points (the
CUDA one checks everything before it touches a GPU, so those checks run here too)."""

from __future__ import annotations

import copy
import ctypes

import pytest
import torch

from bqq_deploy import kernels


@pytest.fixture(scope="module")
def ref_lib():
    try:
        return kernels.ref_library()
    except kernels.LibraryNotFound as exc:
        pytest.skip(f"native library not built: {exc}")


def tolerance(weight) -> torch.Tensor:
    """Per-entry bound on |reference - dequantize()| for the same table, [M, K].

    With fp16 scales every product a*dot, b*ypop, c*zpop (11-bit mantissa times an integer
    <= 4096) is exact in fp32, and Y Z^T of 0/1 values is an exact integer in any order: the
    two sides differ only in how they round the additions. The reference rounds 4 times per
    stack (3 fused multiply-adds and the running sum), torch at most 4p - 1 times in all, each
    time by at most u = 2^-24 of a partial sum, and every partial sum is at most
    S = sum_k |a| dot + |b| ypop + |c| zpop + |d| (the table rebuilt with |scales|). So
    |difference| <= (8p - 1) u S. A wrong row, column or stack errs by O(|W|), ~2^20 times more."""
    absolute = copy.copy(weight)
    absolute.scales = weight.scales.abs()
    return (8 * weight.stacks) * 2.0**-24 * absolute.dequantize()


SHAPES = [  # (M, K, g_r, g_c, rank, stacks): tails in M and K, g_r != g_c, rank % 32 != 0,
    # two words per row, g_c not a multiple of 8 (the kernels' per-entry path), p = 1..3
    (64, 64, 64, 64, 32, 2),
    (70, 100, 32, 48, 20, 3),
    (33, 130, 64, 64, 40, 1),
    (5, 9, 8, 4, 3, 2),
    (100, 90, 24, 20, 40, 2),
]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
def test_reference_matches_dequantize(ref_lib, make_weight, shape, index_dtype):
    weight = make_weight(*shape, bias=False, seed=sum(shape))
    m = weight.out_features
    gen = torch.Generator().manual_seed(m)
    indices = torch.cat([torch.arange(m), torch.randint(-m, m, (2, 7), generator=gen).flatten()]).to(index_dtype)
    table = weight.dequantize()
    want = table[indices.long() % m]
    got = kernels.gather_reference_cpp(indices, weight)
    assert got.shape == (indices.numel(), weight.in_features) and got.dtype == torch.float32
    tol = tolerance(weight)[indices.long() % m]
    assert ((got - want).abs() <= tol).all(), float(((got - want).abs() - tol).max())
    assert (tol < 1e-3 * table.abs().max()).all()  # the bound is far below a misplaced entry


def test_fp16_output_is_the_fp32_result_rounded_once(ref_lib, make_weight):
    weight = make_weight(70, 100, 32, 48, 20, 3, bias=False, seed=1)
    # Block row 0 into fp16's subnormals, block row 2 past its range (inf).
    weight.scales = (weight.scales.float() * torch.tensor([1e-5, 1.0, 1e5])[:, None, None]).half()
    indices = torch.arange(weight.out_features)
    full = kernels.gather_reference_cpp(indices, weight, dtype=torch.float32)
    half = kernels.gather_reference_cpp(indices, weight, dtype=torch.float16)
    assert half.dtype == torch.float16
    assert torch.isinf(half).any() and ((half != 0) & (half.abs() < 2.0**-14)).any()
    assert torch.equal(half.view(torch.int16), full.half().view(torch.int16))  # bit for bit


def test_negative_indices_count_from_the_end(ref_lib, make_weight):
    weight = make_weight(30, 40, 8, 8, 4, 2, bias=False, seed=3)
    got = kernels.gather_reference_cpp(torch.tensor([-1, -30, 29, 0]), weight)
    assert torch.equal(got[0], got[2]) and torch.equal(got[1], got[3])


@pytest.mark.parametrize("index_dtype,bad", [
    (torch.int64, [30, -31, 2**40, -2**63, 2**63 - 1]),
    (torch.int32, [30, -31, 2**31 - 1, -2**31]),
])
def test_out_of_range_gives_zero_rows_and_an_error(ref_lib, make_weight, index_dtype, bad):
    weight = make_weight(30, 40, 8, 8, 4, 2, bias=False, seed=4)
    indices = torch.tensor([5] + bad + [-2], dtype=index_dtype)
    with pytest.raises(IndexError, match=r"out of range \[-30, 30\).*zeros"):
        kernels.gather_reference_cpp(indices, weight)
    got = kernels.gather_reference_cpp(indices, weight, strict=False)
    table = weight.dequantize()
    assert torch.equal(got[1:-1], torch.zeros(len(bad), 40))
    assert (got[0] - table[5]).abs().max() <= tolerance(weight)[5].max()
    assert (got[-1] - table[28]).abs().max() <= tolerance(weight)[28].max()


@pytest.mark.parametrize("shape", [(0,), (3, 0), (), (2, 3, 4)])
def test_output_shape_is_indices_shape_plus_width(ref_lib, make_weight, shape):
    weight = make_weight(30, 40, 8, 8, 4, 2, bias=False, seed=5)
    indices = torch.randint(0, 30, shape, generator=torch.Generator().manual_seed(0))
    got = kernels.gather_reference_cpp(indices, weight)
    assert got.shape == (*shape, 40)
    if indices.numel():
        flat = kernels.gather_reference_cpp(indices.reshape(-1), weight)
        assert torch.equal(got.reshape(-1, 40), flat)


def test_binding_rejects_bad_types(ref_lib, make_weight):
    weight = make_weight(30, 40, 8, 8, 4, 2, bias=False)
    with pytest.raises(TypeError, match="int32 or int64"):
        kernels.gather_reference_cpp(torch.tensor([1.0]), weight)
    with pytest.raises(TypeError, match="float32 or float16"):
        kernels.gather_reference_cpp(torch.tensor([1]), weight, dtype=torch.bfloat16)


# --- the C entry points' argument checks (one set of messages for CPU and CUDA) -------------

def _entry_points():
    found = []
    for loader, name, tail in ((kernels.ref_library, "bqq_gather_reference", ()),
                               (kernels.cuda_library, "bqq_gather_cuda", (None,))):
        try:
            found.append(pytest.param(loader(), name, tail, id=name))
        except kernels.LibraryNotFound as exc:
            found.append(pytest.param(None, name, tail, id=name,
                                      marks=pytest.mark.skip(reason=f"library not built: {exc}")))
    return found


def _call(lib, name, tail, layout, count=4, *, index_type=1, idx=1 << 20, dtype=0, y=1 << 20, z=1 << 20,
          s=1 << 20, out=1 << 20):
    # Fake, aligned, never-dereferenced addresses: every call here must fail validation.
    return getattr(lib, name)(ctypes.byref(layout), count, index_type, idx, dtype, y, z, s, out, None, *tail)


@pytest.mark.parametrize("lib,name,tail", _entry_points())
def test_entry_points_check_arguments_first(lib, name, tail):
    layout = kernels._Layout(64, 64, 64, 64, 32, 2)
    err = kernels.BQQ_ERR_INVALID_ARGUMENT

    def message():
        return lib.bqq_last_error().decode()

    assert _call(lib, name, tail, layout, count=-1) == err and message() == "count=-1 is negative"
    assert _call(lib, name, tail, layout, index_type=7) == err and "index_type=7" in message()
    assert _call(lib, name, tail, layout, dtype=5) == err and "dtype=5" in message()
    assert _call(lib, name, tail, layout, idx=None) == err and message() == "indices is NULL"
    assert _call(lib, name, tail, layout, idx=(1 << 20) + 4) == err
    assert message() == "indices is not 8-byte aligned"
    assert _call(lib, name, tail, layout, s=(1 << 20) + 2) == err and message() == "scales is not 4-byte aligned"
    assert _call(lib, name, tail, layout, out=None, dtype=1) == err and message() == "out is NULL"
    assert _call(lib, name, tail, layout, count=0, idx=None, out=None) == kernels.BQQ_OK  # nothing to do
    layout.group_cols = 0
    assert _call(lib, name, tail, layout) == err and "group_cols=0" in message()
