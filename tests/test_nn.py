"""BQQLinear's factored forward equals the dense reconstruction x @ W_hat^T + bias."""

from __future__ import annotations

import pytest
import torch

from bqq_deploy.nn import BQQLinear, reference_matmul

SHAPES = [  # (M, K, g_r, g_c, rank, stacks): tails in M and K, g_r != g_c, rank % 32 != 0
    (64, 64, 64, 64, 32, 2),
    (70, 100, 32, 48, 20, 3),
    (33, 130, 64, 64, 40, 1),
    (5, 9, 8, 4, 3, 2),
]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("lead", [(), (3,), (2, 5)])
def test_factored_forward_equals_dense_reconstruction(make_weight, shape, lead):
    weight = make_weight(*shape, seed=sum(shape))
    x = torch.randn(*lead, weight.in_features, generator=torch.Generator().manual_seed(1))
    dense = x @ weight.dequantize().T + weight.bias
    out = BQQLinear(weight)(x)
    assert out.shape == (*lead, weight.out_features)
    # Both sides are fp32 sums of O(K * l) terms in different orders; 1e-5 of the largest
    # output is a few hundred ulps, far below any real layout error (which is O(1)).
    assert (out - dense).abs().max() <= 1e-5 * dense.abs().max()


def test_forward_keeps_dtype_and_rejects_wrong_width(make_weight):
    layer = BQQLinear(make_weight(16, 32, 8, 8, 4, 2))
    assert layer(torch.randn(2, 32, dtype=torch.float64)).dtype == torch.float64
    with pytest.raises(ValueError, match="expects 32"):
        reference_matmul(torch.randn(2, 31), layer.packed)


def test_state_dict_round_trip(make_weight):
    layer = BQQLinear(make_weight(16, 32, 8, 8, 4, 2))
    clone = BQQLinear(make_weight(16, 32, 8, 8, 4, 2, seed=5))
    clone.load_state_dict(layer.state_dict())
    x = torch.randn(3, 32)
    assert torch.equal(clone(x), layer(x))
