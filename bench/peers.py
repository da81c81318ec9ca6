"""Peer quantisers for the real-model benchmark (issue 12), group-wise along the input
dimension like bench/baselines.rtn_quantize, with every stored float rounded to fp16:

- hqq_quantize: HQQ (half-quadratic optimisation of the zero point) from the pip package
  `hqq`, data-free, run on the CPU; bits + 32 / g per weight (fp16 scale and zero per group).
- gptq_quantize: GPTQ (Frantar et al. 2022) written here from the algorithm: columns
  quantised in order, each column's rounding error, divided by the diagonal of the upper
  Cholesky factor of H^-1, fed into the not yet quantised columns through that factor's row;
  group scale and minimum taken from the updated weights when a group starts (asymmetric
  min/max grid as in rtn_quantize); no activation reordering; dampening `damp` x mean(diag H).
  H = X^T X from the layer's calibration inputs. bits + 32 / g per weight.
"""

from __future__ import annotations

import torch

from baselines import Quantized, rtn_bits_per_weight


def hqq_quantize(w: torch.Tensor, bits: int, group_size: int = 64) -> Quantized:
    """HQQ with the package's default proximal solver settings; scale and zero stored fp16."""
    try:
        from hqq.core.quantize import Quantizer
    except ImportError as exc:
        raise RuntimeError("HQQ needs the pip package hqq (pip install '.[bench]')") from exc
    w = w.detach().float()
    if w.shape[1] % group_size:
        raise ValueError(f"hqq_quantize needs in_features divisible by {group_size}, got {w.shape[1]}")
    codes, meta = Quantizer.quantize(w, nbits=bits, channel_wise=True, group_size=group_size,
                                     optimize=True, axis=1, compute_dtype=torch.float32,
                                     device="cpu")
    meta["scale"] = meta["scale"].half().float()
    meta["zero"] = meta["zero"].half().float()
    w_hat = Quantizer.dequantize(codes, meta).reshape(w.shape).float()
    return Quantized(f"hqq{bits}-g{group_size}", w_hat, rtn_bits_per_weight(bits, group_size, *w.shape))


def _group_grid(block: torch.Tensor, bits: int):
    """fp16 minimum and step of the asymmetric grid of each row of block [M, g]."""
    lo, hi = block.amin(-1), block.amax(-1)
    zero = lo.half().float()
    scale = ((hi - lo) / (2**bits - 1)).half().float()
    return zero, torch.where(scale > 0, scale, torch.ones_like(scale))


def gptq_quantize(w: torch.Tensor, hessian: torch.Tensor, bits: int, group_size: int = 64,
                  damp: float = 0.01, block: int = 128) -> Quantized:
    """GPTQ of w [M, K] given H = X^T X [K, K]; returns the dequantised weight."""
    w = w.detach().double().clone()
    rows, cols = w.shape
    if block % group_size:
        raise ValueError(f"block ({block}) must be a multiple of group_size ({group_size})")
    if tuple(hessian.shape) != (cols, cols):
        raise ValueError(f"hessian shape {tuple(hessian.shape)}, expected ({cols}, {cols})")
    h = hessian.detach().double().clone()
    dead = h.diagonal() == 0  # features never active: their weights cannot matter
    h[dead, dead] = 1
    w[:, dead] = 0
    h.diagonal().add_(damp * float(h.diagonal().mean()))
    # Upper Cholesky factor U of H^-1 (H^-1 = U^T U): row i of U, divided by U_ii, is how the
    # optimal compensation spreads column i's error over the columns after it.
    u = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    levels = 2**bits - 1
    q = torch.zeros_like(w)
    zero = scale = None
    for b0 in range(0, cols, block):
        b1 = min(b0 + block, cols)
        err = torch.zeros(rows, b1 - b0, dtype=w.dtype)
        for i in range(b0, b1):
            if i % group_size == 0:
                zero, scale = _group_grid(w[:, i:i + group_size], bits)
            col = w[:, i]
            q[:, i] = torch.clamp(torch.round((col - zero) / scale), 0, levels) * scale + zero
            e = (col - q[:, i]) / u[i, i]
            w[:, i:b1] -= e[:, None] * u[i, i:b1][None, :]
            err[:, i - b0] = e
        w[:, b1:] -= err @ u[b0:b1, b1:]  # the block's deferred updates in one product
    return Quantized(f"gptq{bits}-g{group_size}", q.float(), rtn_bits_per_weight(bits, group_size, rows, cols))
