"""CUDA kernels against the C++ CPU references on a GPU: every BQQMatMul path (tensor-core
decode and mma tiles, the portable SIMT kernels forced with the portable switch, and the dense
path - W_hat + cuBLASLt - forced with a threshold of 1 row), every row variant of the
small-batch kernels (1, 2, 3-4, 5-8, 9-16 rows), fp16 and fp32, odd shapes, misaligned
activation pointers, bias and no bias; BQQGather and dequantize bit for bit. Outputs are
poisoned with NaN first so an element a kernel skips cannot pass."""

from __future__ import annotations

import copy
import ctypes

import pytest
import torch

from bqq_deploy import kernels
from bqq_deploy.nn import BQQLinear, reference_matmul

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module", autouse=True)
def need_cuda():
    usable, reason = kernels.cuda_status()
    if not usable:
        pytest.skip(f"CUDA kernels cannot run here: {reason}")
    try:
        kernels.ref_library()
    except kernels.LibraryNotFound as exc:
        pytest.skip(f"the CPU reference (the oracle) is not built: {exc}")


@pytest.fixture(params=["fast", "portable", "dense"])
def path(request):
    """Run the test with the default dispatch, with the portable SIMT kernels (the sm_75 /
    sm_72 code path) whatever the GPU, and with the dense path for every fp16 row count."""
    if request.param == "dense" and kernels.dense_min_rows() is None:
        pytest.skip("library built without cuBLASLt: no dense path")
    portable = kernels.set_portable(request.param == "portable")
    dense = kernels.set_dense_min_rows(1) if request.param == "dense" else None
    yield request.param
    kernels.set_portable(portable)
    if dense is not None:
        kernels.set_dense_min_rows(dense)


def kernel_path(portable: bool, rows: int, dtype: torch.dtype, weight) -> set[str]:
    small = rows <= 16
    if portable or dtype == torch.float32 or torch.cuda.get_device_capability() < (8, 0):
        return {"gemv-portable" if small else "tiled-portable"}
    if not small:
        return {"tiled-mma"}
    # The decode kernel takes 16-multiple groups; other layouts fall back to the SIMT kernel.
    fits = weight.group_rows % 16 == 0 and weight.group_cols % 16 == 0
    return {"decode-tc"} if fits else {"gemv-portable"}


def expected_path(path: str, rows: int, dtype: torch.dtype, weight, aligned: bool = True) -> set[str]:
    kernel = kernel_path(path == "portable", rows, dtype, weight)
    threshold = kernels.dense_min_rows()
    if path != "portable" and dtype == torch.float16 and threshold is not None and rows >= threshold:
        # cuBLASLt may have no algorithm for a 2-byte aligned x: then the kernels serve.
        return {"dense"} if aligned else {"dense"} | kernel
    return kernel


def tolerance(x: torch.Tensor, weight, want: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Per-element bound on |kernel - reference| for the same (already rounded) inputs.

    With u = 2^-11 (fp16 unit roundoff) and S[n, r] = sum_c |x[n, c]| |W|(r, c), where |W| is
    W_hat rebuilt with |a|, |b|, |c|, |d| (an upper bound for every partial product):
      - the output is rounded to fp16 once: u |y|;
      - the decode kernel rounds each a*T_q + b*s to fp16 before the second mma, the tiled
        kernel rounds each W_hat entry to fp16: either way at most u S;
      - fp32 accumulation of the rest: far below u S at these sizes (n 2^-24 S, n < 2^10).
    So fp16: |err| <= u |y| + 2u S. fp32 (no fp16 rounding anywhere): 2^-14 S covers fp32
    sums of up to 2^10 terms in any order. The bias is drawn at the scale of y, so a
    misindexed bias errs by O(|y|), far above this bound (checked in the test)."""
    absolute = copy.copy(weight)
    absolute.scales = weight.scales.abs()
    absolute.bias = None
    s = reference_matmul(x.float().abs(), absolute)
    if dtype == torch.float16:
        return 2.0**-11 * want.abs() + 2.0**-10 * s
    return 2.0**-14 * s


def check(weight, rows: int, dtype: torch.dtype, path: str, *, seed: int = 0, misalign: bool = False):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, weight.in_features, generator=gen).to(dtype)
    if weight.bias is not None:  # bias at the scale of y: a misindexed bias cannot hide
        plain = copy.copy(weight)
        plain.bias = None
        scale = reference_matmul(x.float(), plain).std().item() or 1.0
        weight = copy.copy(weight)
        weight.bias = scale * torch.randn(weight.out_features, generator=gen)
    want = kernels.reference_matmul_cpp(x.float(), weight)
    tol = tolerance(x, weight, want, dtype)
    if weight.bias is not None:
        shifted = weight.bias.roll(1) - weight.bias
        assert (shifted.abs() > tol).float().mean() > 0.5, "tolerance too loose to catch a misindexed bias"
    gpu = weight.to("cuda")
    xg = x.cuda()
    if misalign:  # the same values one element into a buffer: data_ptr off 16-byte alignment
        buf = torch.empty(rows * weight.in_features + 1, dtype=dtype, device="cuda")
        buf[1:] = xg.reshape(-1)
        xg = buf[1:].view(rows, weight.in_features)
    out = torch.full((rows, weight.out_features), float("nan"), dtype=dtype, device="cuda")
    got = kernels.cuda_matmul(xg, gpu, out=out)
    torch.cuda.synchronize()
    assert got.data_ptr() == out.data_ptr()
    assert kernels.last_path() in expected_path(path, rows, dtype, weight, aligned=not misalign)
    got = got.float().cpu()
    assert torch.isfinite(got).all(), "kernel left outputs unwritten (NaN poison survived)"
    bad = (got - want).abs() > tol
    assert not bad.any(), (f"{int(bad.sum())} elements off, worst excess "
                           f"{float(((got - want).abs() - tol).max()):.3g}")


SHAPES = [  # (M, K, g_r, g_c, rank, stacks, bias)
    (64, 64, 64, 64, 32, 2, True),
    (70, 100, 32, 48, 20, 3, True),    # tails in M and K, g_r != g_c, rank % 32 != 0
    (33, 130, 64, 64, 40, 1, False),   # two words per row
    (5, 9, 8, 4, 3, 2, True),          # tiny blocks: general reconstruction path
    (200, 136, 96, 40, 48, 2, True),   # g_r > 64: several row tiles per block row
    (300, 520, 128, 64, 64, 3, False),
    (256, 256, 16, 16, 32, 2, True),   # smallest groups the decode kernel takes
]
ROWS = [1, 2, 3, 5, 8, 9, 16, 17, 130]  # every small-batch variant, then the tiled kernels


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("shape", SHAPES)
def test_cuda_matches_cpu_reference(make_weight, shape, rows, dtype, path):
    *fields, bias = shape
    check(make_weight(*fields, bias=bias, seed=sum(fields)), rows, dtype, path, seed=rows)


@pytest.mark.parametrize("rows", [1, 4, 9, 16, 33])
def test_misaligned_activations(make_weight, rows, path):
    check(make_weight(128, 192, 64, 64, 32, 2, seed=5), rows, torch.float16, path, seed=rows, misalign=True)


@pytest.mark.parametrize("rows", [1, 16, 256])
def test_llm_sized_layer(make_weight, rows, path):
    check(make_weight(1024, 4096, 64, 64, 32, 2, seed=3), rows, torch.float16, path, seed=rows)


def test_dequantize_is_the_gather_of_every_row(make_weight):
    """bqq_dequantize_cuda is the W_hat row kernel over all rows: bit for bit the CPU gather
    reference's fp16 table (same fused multiply-adds, one rounding to fp16)."""
    weight = make_weight(70, 100, 32, 48, 20, 3)
    want = kernels.gather_reference_cpp(torch.arange(weight.out_features), weight, dtype=torch.float16)
    got = kernels.cuda_dequantize(weight.to("cuda")).cpu()
    assert torch.equal(got.view(torch.int16), want.view(torch.int16))


GATHER_SHAPES = [  # (M, K, g_r, g_c, rank, stacks): as the CPU tests, plus K % 8 != 0 with
    # g_c % 8 == 0 (scalar stores) and an embedding-sized table
    (64, 64, 64, 64, 32, 2), (70, 100, 32, 48, 20, 3), (33, 130, 64, 64, 40, 1), (5, 9, 8, 4, 3, 2),
    (100, 90, 24, 20, 40, 2), (50, 36, 16, 8, 8, 1), (30522, 384, 64, 64, 32, 2),
]


@pytest.mark.parametrize("shape", GATHER_SHAPES, ids=str)
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_gather_equals_cpu_reference_bit_for_bit(make_weight, shape, index_dtype, dtype):
    weight = make_weight(*shape, bias=False, seed=sum(shape))
    m = weight.out_features
    gen = torch.Generator().manual_seed(m)
    indices = torch.randint(-m, m, (3, 41), generator=gen).to(index_dtype)
    want = kernels.gather_reference_cpp(indices, weight, dtype=dtype)
    out = torch.full((indices.numel(), weight.in_features), float("nan"), dtype=dtype, device="cuda")
    got = kernels.gather_cuda(indices.cuda(), weight.to("cuda"), dtype=dtype, out=out)
    assert got.shape == (3, 41, weight.in_features) and got.data_ptr() == out.data_ptr()
    bits = torch.int32 if dtype == torch.float32 else torch.int16
    assert torch.equal(got.cpu().view(bits), want.view(bits))  # NaN poison cannot survive this


def test_gather_out_of_range_rows_are_zero(make_weight):
    weight = make_weight(30, 40, 8, 8, 4, 2, bias=False, seed=4)
    indices = torch.tensor([5, 30, -31, 2**40, -2**63, -1], device="cuda")
    with pytest.raises(IndexError, match=r"\[-30, 30\)"):
        kernels.gather_cuda(indices, weight.to("cuda"))
    got = kernels.gather_cuda(indices, weight.to("cuda"), strict=False).cpu()
    assert torch.equal(got, kernels.gather_reference_cpp(indices.cpu(), weight, strict=False))
    assert torch.equal(got[1:5], torch.zeros(4, 40))


def test_gather_empty_and_scalar_indices(make_weight):
    weight = make_weight(30, 40, 8, 8, 4, 2, bias=False, seed=5).to("cuda")
    assert kernels.gather_cuda(torch.empty(0, 3, dtype=torch.int64, device="cuda"), weight).shape == (0, 3, 40)
    assert kernels.gather_cuda(torch.tensor(7, device="cuda"), weight).shape == (40,)


def test_dense_path_falls_back_without_workspace(make_weight):
    """The dense path needs the workspace bqq_matmul_cuda_workspace asks for; a caller that
    passes none gets the kernels, with the same result."""
    if kernels.dense_min_rows() is None:
        pytest.skip("library built without cuBLASLt: no dense path")
    weight = make_weight(128, 192, 64, 64, 32, 2, bias=False, seed=6).to("cuda")
    x = torch.randn(64, 192, device="cuda", dtype=torch.float16)
    before = kernels.set_dense_min_rows(1)
    try:
        with_ws = kernels.cuda_matmul(x, weight)
        assert kernels.last_path() == "dense"
        lib = kernels.cuda_library()
        out = torch.empty_like(with_ws)
        status = lib.bqq_matmul_cuda(ctypes.byref(kernels.layout_of(weight)), 64, 1, x.data_ptr(),
                                     weight.y_bits.data_ptr(), weight.z_bits.data_ptr(), weight.scales.data_ptr(),
                                     None, out.data_ptr(), None, 0, torch.cuda.current_stream().cuda_stream)
        assert status == kernels.BQQ_OK and kernels.last_path() in kernel_path(False, 64, torch.float16, weight)
        want = kernels.reference_matmul_cpp(x.float().cpu(), weight.to("cpu"))
        tol = tolerance(x.cpu(), weight.to("cpu"), want, torch.float16)
        assert ((with_ws.float().cpu() - want).abs() <= tol).all() and ((out.float().cpu() - want).abs() <= tol).all()
    finally:
        kernels.set_dense_min_rows(before)


def test_bqqlinear_dispatches_to_cuda(make_weight):
    weight = make_weight(70, 100, 32, 48, 20, 3)
    layer = BQQLinear(weight).cuda()
    x = torch.randn(2, 5, 100, device="cuda", dtype=torch.float16)
    out = layer(x)
    assert out.dtype == torch.float16 and out.shape == (2, 5, 70)
    want = kernels.reference_matmul_cpp(x.float().cpu(), weight)
    tol = tolerance(x.cpu().reshape(-1, 100), weight, want.reshape(-1, 70), torch.float16)
    assert ((out.float().cpu().reshape(-1, 70) - want.reshape(-1, 70)).abs() <= tol).all()


def test_cuda_rejects_cpu_input(make_weight):
    with pytest.raises(ValueError, match="CUDA input"):
        kernels.cuda_matmul(torch.randn(1, 32), make_weight(16, 32, 8, 8, 4, 2).to("cuda"))
