"""CUDA kernels against the C++ CPU reference on a GPU: every kernel family (tensor-core decode
and mma tiles, and the portable SIMT kernels forced with the portable switch), every row
variant of the small-batch kernels (1, 2, 3-4, 5-8, 9-16 rows), fp16 and fp32, odd shapes,
misaligned activation pointers, bias and no bias. Outputs are poisoned with NaN first so an
element a kernel skips cannot pass."""

from __future__ import annotations

import copy

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


@pytest.fixture(params=["fast", "portable"])
def path(request):
    """Run the test once with the fastest kernels and once with the portable SIMT kernels
    (the sm_75 / sm_72 code path), whatever the GPU."""
    before = kernels.set_portable(request.param == "portable")
    yield request.param
    kernels.set_portable(before)


def expected_path(path: str, rows: int, dtype: torch.dtype, weight) -> set[str]:
    small = rows <= 16
    if path == "portable" or dtype == torch.float32 or torch.cuda.get_device_capability() < (8, 0):
        return {"gemv-portable" if small else "tiled-portable"}
    if not small:
        return {"tiled-mma"}
    # The decode kernel takes 16-multiple groups; other layouts fall back to the SIMT kernel.
    fits = weight.group_rows % 16 == 0 and weight.group_cols % 16 == 0
    return {"decode-tc"} if fits else {"gemv-portable"}


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
    assert kernels.last_path() in expected_path(path, rows, dtype, weight)
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


def test_dequantize_matches_reference(make_weight):
    weight = make_weight(70, 100, 32, 48, 20, 3)
    eye = torch.eye(weight.in_features)
    plain = copy.copy(weight)
    plain.bias = None
    want = reference_matmul(eye, plain).T  # W_hat [M, K]
    got = kernels.cuda_dequantize(weight.to("cuda")).float().cpu()
    assert torch.allclose(got, want, rtol=2.0**-10, atol=0.0), float((got - want).abs().max())


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
