"""CUDA kernels against the C++ CPU reference on a GPU: both paths (small batch rows <= 16,
tiled rows > 16: tensor-core on sm_80+ for fp16, SIMT otherwise), fp16 and fp32, odd shapes,
outputs poisoned with NaN first so an element the kernel skips cannot pass."""

from __future__ import annotations

import pytest
import torch

from bqq_deploy import kernels
from bqq_deploy.nn import BQQLinear

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


# Relative to max|y|. fp32: fp32 sums of O(K) terms in another order than the double
# reference. fp16: the output is rounded to fp16 (2^-11) and the tensor-core path rounds
# each W_hat entry to fp16 (2^-11 relative, random sign, so ~2^-11 * max|y| overall).
TOLERANCE = {torch.float32: 1e-5, torch.float16: 1e-2}

SHAPES = [  # (M, K, g_r, g_c, rank, stacks, bias)
    (64, 64, 64, 64, 32, 2, True),
    (70, 100, 32, 48, 20, 3, True),    # tails in M and K, g_r != g_c, rank % 32 != 0
    (33, 130, 64, 64, 40, 1, False),   # two words per row
    (5, 9, 8, 4, 3, 2, True),          # tiny blocks: general reconstruction path
    (200, 136, 96, 40, 48, 2, True),   # g_r > 64: several row tiles per block row
    (300, 520, 128, 64, 64, 3, False),
]
ROWS = [1, 3, 16, 17, 130, 300]


def _check(weight, rows, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, weight.in_features, generator=gen).to(dtype)
    want = kernels.reference_matmul_cpp(x.float(), weight)  # same rounded inputs
    gpu = weight.to("cuda")
    out = torch.full((rows, weight.out_features), float("nan"), dtype=dtype, device="cuda")
    got = kernels.cuda_matmul(x.cuda(), gpu, out=out)
    torch.cuda.synchronize()
    assert got.data_ptr() == out.data_ptr()
    got = got.float().cpu()
    assert torch.isfinite(got).all(), "kernel left outputs unwritten (NaN poison survived)"
    err = (got - want).abs().max() / want.abs().max()
    assert err <= TOLERANCE[dtype], f"rel err {err:.3g}"


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("shape", SHAPES)
def test_cuda_matches_cpu_reference(make_weight, shape, rows, dtype):
    *fields, bias = shape
    _check(make_weight(*fields, bias=bias, seed=sum(fields)), rows, dtype, seed=rows)


@pytest.mark.parametrize("rows", [1, 16, 256])
def test_llm_sized_layer(make_weight, rows):
    _check(make_weight(1024, 4096, 64, 64, 32, 2, seed=3), rows, torch.float16)


def test_bqqlinear_dispatches_to_cuda(make_weight):
    weight = make_weight(70, 100, 32, 48, 20, 3)
    layer = BQQLinear(weight).cuda()
    x = torch.randn(2, 5, 100, device="cuda", dtype=torch.float16)
    out = layer(x)
    assert out.dtype == torch.float16 and out.shape == (2, 5, 70)
    want = kernels.reference_matmul_cpp(x.float().cpu(), weight)
    # Small-batch sums use atomics (order varies run to run): compare with the oracle.
    assert (out.float().cpu() - want).abs().max() <= TOLERANCE[torch.float16] * want.abs().max()


def test_cuda_rejects_cpu_input(make_weight):
    with pytest.raises(ValueError, match="CUDA input"):
        kernels.cuda_matmul(torch.randn(1, 32), make_weight(16, 32, 8, 8, 4, 2).to("cuda"))
