"""BQQLinear: a drop-in nn.Linear replacement whose forward is the factored product of
docs/FORMAT.md section 3; it never builds the dense weight."""

from __future__ import annotations

import torch
from torch import nn

from .format import BQQWeight, unpack_bits

# Rows of x handled per chunk by the reference forward: bounds the [p, N, R, C, l]
# intermediate to a few hundred MB on large layers.
_REFERENCE_ROW_CHUNK = 256


def reference_matmul(x: torch.Tensor, weight: BQQWeight) -> torch.Tensor:
    """y = x W_hat^T (+ bias) in fp32 through the factored form; x is [..., K]."""
    if x.shape[-1] != weight.in_features:
        raise ValueError(f"input has {x.shape[-1]} features, layer expects {weight.in_features}")
    lead = x.shape[:-1]
    rows2d = x.reshape(-1, weight.in_features).float()
    g_r, g_c = weight.group_rows, weight.group_cols
    n_rb, n_cb = weight.grid
    rows2d = nn.functional.pad(rows2d, (0, n_cb * g_c - weight.in_features))
    y = unpack_bits(weight.y_bits, weight.rank).float()  # [p, R, C, g_r, l]
    z = unpack_bits(weight.z_bits, weight.rank).float()  # [p, R, C, g_c, l]
    a, b, c, d = weight.scales.float().unbind(-1)  # [p, R, C]
    y_rowsum = y.sum(-1)  # [p, R, C, g_r]
    z_colsum = z.sum(-1)  # [p, R, C, g_c]
    outputs = []
    for chunk in rows2d.split(_REFERENCE_ROW_CHUNK):
        xb = chunk.view(-1, n_cb, g_c)  # [N, C, g_c]
        s = xb.sum(-1)  # [N, C]
        t = torch.einsum("ncg,prcgl->pnrcl", xb, z)  # x_j Z^T per block and stack
        out = torch.einsum("pnrcl,prcgl->nrg", t * a[:, None, :, :, None], y)
        out += torch.einsum("nc,prcg->nrg", s, b[..., None] * y_rowsum)
        per_block = torch.einsum("ncg,prcg->nr", xb, c[..., None] * z_colsum)
        per_block += torch.einsum("nc,prc->nr", s, d)
        out += per_block[..., None]
        outputs.append(out.reshape(len(chunk), n_rb * g_r)[:, : weight.out_features])
    result = torch.cat(outputs) if outputs else rows2d.new_zeros(0, weight.out_features)
    if weight.bias is not None:
        result = result + weight.bias.float()
    return result.reshape(*lead, weight.out_features)


class BQQLinear(nn.Module):
    """Linear layer holding a BQQ-packed weight (buffers y_bits, z_bits, scales, bias)."""

    def __init__(self, weight: BQQWeight):
        super().__init__()
        weight.validate()
        self.in_features = weight.in_features
        self.out_features = weight.out_features
        self.group_rows, self.group_cols = weight.group_rows, weight.group_cols
        self.rank = weight.rank
        self.register_buffer("y_bits", weight.y_bits)
        self.register_buffer("z_bits", weight.z_bits)
        self.register_buffer("scales", weight.scales)
        self.register_buffer("bias", weight.bias)

    @property
    def packed(self) -> BQQWeight:
        return BQQWeight(self.out_features, self.in_features, self.group_rows, self.group_cols,
                         self.rank, self.y_bits, self.z_bits, self.scales, self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return reference_matmul(x, self.packed).to(x.dtype)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"group=({self.group_rows}, {self.group_cols}), rank={self.rank}, "
                f"stacks={self.scales.shape[0]}, bias={self.bias is not None}")
