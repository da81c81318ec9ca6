"""The comparison baselines of bench/baselines.py: error bounds and bit accounting."""

import importlib.util
import math
import sys
from pathlib import Path

import pytest
import torch

_SPEC = importlib.util.spec_from_file_location(
    "baselines", Path(__file__).resolve().parents[1] / "bench" / "baselines.py")
baselines = importlib.util.module_from_spec(_SPEC)
sys.modules["baselines"] = baselines  # dataclasses look their module up while executing it
_SPEC.loader.exec_module(baselines)


def _mse(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b) ** 2).mean())


@pytest.mark.parametrize("bits,group", [(2, 64), (3, 64), (4, 128), (2, 48)])
def test_rtn_error_within_half_step(bits, group):
    torch.manual_seed(0)
    w = torch.randn(40, 200) * torch.linspace(0.1, 3, 200)  # columns of different ranges
    result = baselines.rtn_quantize(w, bits, group)
    n_groups = math.ceil(200 / group)
    padded = torch.nn.functional.pad(w, (0, n_groups * group - 200)).reshape(40, n_groups, group)
    cols = torch.arange(n_groups * group).reshape(n_groups, group) < 200
    lo = torch.where(cols, padded, torch.inf).amin(-1)
    hi = torch.where(cols, padded, -torch.inf).amax(-1)
    step = ((hi - lo) / (2**bits - 1)).repeat_interleave(group, dim=1)[:, :200]
    # Half a quantisation step, plus slack for the fp16 rounding of the stored scale and
    # zero: (2^bits - 1) steps of relative error 2^-11 each plus |zero| * 2^-11.
    slack = (2**bits * step + lo.abs().repeat_interleave(group, 1)[:, :200]) * 2**-11
    assert bool(((result.weight - w).abs() <= step / 2 + slack).all())
    # Quantised values sit on at most 2^bits levels per group.
    groups = torch.nn.functional.pad(result.weight, (0, n_groups * group - 200)).reshape(40, n_groups, group)
    for row in range(0, 40, 13):
        assert len(torch.unique(groups[row, 0])) <= 2**bits


def test_rtn_constant_group_is_exact():
    w = torch.full((3, 64), 0.5)
    assert torch.equal(baselines.rtn_quantize(w, 2, 64).weight, w)  # 0.5 is exact in fp16


@pytest.mark.parametrize("group", [None, 32])
def test_bcq_error_decreases_with_bits(group):
    torch.manual_seed(1)
    w = torch.randn(32, 96)
    errors = [_mse(baselines.bcq_quantize(w, bits, group).weight, w) for bits in range(1, 5)]
    assert all(b < a for a, b in zip(errors, errors[1:])), errors
    # One plane with alpha = mean |w| is the optimal 1-bit code: error = E[w^2] - E|w|^2
    # per row, which the refits cannot beat (fp16 alphas: relative slack 1e-3).
    if group is None:
        optimum = float((w.pow(2).mean(1) - w.abs().mean(1).pow(2)).mean())
        assert errors[0] == pytest.approx(optimum, rel=1e-3)


def test_bcq_two_bits_matches_lloyd_max_on_gaussian():
    # Optimal 2-level-pair (4-level) quantiser of N(0,1) has MSE 0.1175; a symmetric BCQ
    # code {+-a1 +- a2} can express it, so alternating refits should get within a few %.
    torch.manual_seed(2)
    w = torch.randn(64, 1024)
    assert _mse(baselines.bcq_quantize(w, 2).weight, w) < 0.1175 * 1.05


def test_svd_exact_at_full_rank_and_monotone():
    torch.manual_seed(3)
    w = torch.randn(24, 40)
    full = baselines.svd_quantize(w, rank=24).weight
    # Only the fp16 factors round: relative error per entry ~ 2^-11 of the factor sizes.
    assert torch.allclose(full, w, atol=5e-3 * float(w.abs().max()))
    errors = [_mse(baselines.svd_quantize(w, rank=r).weight, w) for r in (2, 8, 16, 24)]
    assert all(b < a for a, b in zip(errors, errors[1:]))


def test_bit_accounting():
    assert baselines.rtn_bits_per_weight(2, 64, 128, 128) == 2 + 32 / 64
    assert baselines.rtn_bits_per_weight(3, 128, 10, 256) == 3 + 32 / 128
    # A partial last group pays a whole group's fp16 scale and zero: 2 groups for K = 100.
    assert baselines.rtn_bits_per_weight(2, 64, 1, 100) == 2 + 2 * 32 / 100
    assert baselines.bcq_bits_per_weight(3, None, 64, 256) == 3 + 3 * 16 / 256
    assert baselines.bcq_bits_per_weight(2, 64, 64, 256) == 2 + 2 * 16 / 64
    assert baselines.svd_bits_per_weight(8, 128, 128) == 16 * 8 * 256 / 128**2
    # Largest rank within the budget: 2 bits on 128x128 -> 2*16384 / (16*256) = 8.
    assert baselines.svd_rank_for_bits(2, 128, 128) == 8
    assert baselines.svd_rank_for_bits(2.5, 128, 128) == 10
    assert baselines.svd_bits_per_weight(baselines.svd_rank_for_bits(2.3, 96, 384), 96, 384) <= 2.3
    w = torch.randn(10, 100)
    assert baselines.rtn_quantize(w, 2, 64).bits_per_weight == baselines.rtn_bits_per_weight(2, 64, 10, 100)
    assert baselines.bcq_quantize(w, 2, 64).bits_per_weight == baselines.bcq_bits_per_weight(2, 64, 10, 100)


def test_bad_input_is_rejected():
    with pytest.raises(ValueError, match="2-D"):
        baselines.rtn_quantize(torch.randn(4), 2)
    with pytest.raises(ValueError, match="bits"):
        baselines.bcq_quantize(torch.randn(4, 4), 0)
    with pytest.raises(ValueError, match="exactly one"):
        baselines.svd_quantize(torch.randn(4, 4))
