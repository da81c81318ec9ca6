"""Baseline weight quantisers to compare BQQ against at equal bits per weight.

Every quantiser returns the dequantised matrix (what a kernel would compute with) and its
exact storage cost in bits per weight, overheads included, with every stored float
(scales, zero points, alphas, factors) rounded to fp16 before reconstruction so the
error is that of the stored representation:

- rtn: uniform asymmetric round-to-nearest per group of `g` input columns,
  fp16 scale + fp16 zero (minimum) per group -> bits + 32 / g.
- bcq: binary-coding quantisation W ~= sum_i alpha_i * B_i, B_i in {-1, +1}: greedy
  residual signs, then alternating least squares (exact alpha refit given B, exact
  best code per weight given alpha); fp16 alphas per row or per group -> bits + 16*bits / g.
- svd: truncated SVD with fp16 factors; rank chosen so r*(M+K)*16 <= budget * M*K.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Quantized:
    """A baseline's result: dequantised weight [M, K] (fp32) and its storage cost."""

    method: str
    weight: torch.Tensor
    bits_per_weight: float


def _fp16(t: torch.Tensor) -> torch.Tensor:
    return t.half().float()


def _groups(w: torch.Tensor, group_size: int | None) -> tuple[torch.Tensor, int]:
    """View [M, K] as [M, G, g] groups along the input dim, zero-padding the last group
    (padding is sliced off by _ungroup). group_size None = one group per row."""
    rows, cols = w.shape
    g = cols if group_size is None else group_size
    if g < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    n_groups = math.ceil(cols / g)
    padded = torch.nn.functional.pad(w, (0, n_groups * g - cols))
    return padded.reshape(rows, n_groups, g), cols


def _ungroup(groups: torch.Tensor, cols: int) -> torch.Tensor:
    return groups.reshape(groups.shape[0], -1)[:, :cols].contiguous()


def _check_matrix(w: torch.Tensor) -> torch.Tensor:
    if w.dim() != 2 or w.numel() == 0:
        raise ValueError(f"expected a non-empty 2-D weight [M, K], got shape {tuple(w.shape)}")
    return w.detach().float()


# ---------------------------------------------------------------------------------------
# round to nearest

def rtn_bits_per_weight(bits: int, group_size: int, rows: int, cols: int) -> float:
    """Codes plus one fp16 scale and one fp16 zero per group (a partial last group pays
    a whole group's overhead)."""
    return bits + 32 * rows * math.ceil(cols / group_size) / (rows * cols)


def rtn_quantize(w: torch.Tensor, bits: int, group_size: int = 64) -> Quantized:
    """Uniform asymmetric round-to-nearest: per group, q = round((w - min) / scale) in
    [0, 2^bits - 1], w_hat = q * scale + min, scale = (max - min) / (2^bits - 1)."""
    w = _check_matrix(w)
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be in 1..8, got {bits}")
    groups, cols = _groups(w, group_size)
    # Padding zeros must not widen a partial group's range: use the real columns only.
    valid = torch.arange(groups.shape[1] * groups.shape[2]).reshape(groups.shape[1:]) < cols
    lo = torch.where(valid, groups, torch.inf).amin(-1, keepdim=True)
    hi = torch.where(valid, groups, -torch.inf).amax(-1, keepdim=True)
    levels = 2**bits - 1
    zero = _fp16(lo)
    scale = _fp16((hi - lo) / levels)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # constant group: q = 0
    q = torch.clamp(torch.round((groups - zero) / scale), 0, levels)
    return Quantized(f"rtn{bits}-g{group_size}", _ungroup(q * scale + zero, cols),
                     rtn_bits_per_weight(bits, group_size, *w.shape))


# ---------------------------------------------------------------------------------------
# binary-coding quantisation

def bcq_bits_per_weight(bits: int, group_size: int | None, rows: int, cols: int) -> float:
    """Sign bits plus `bits` fp16 alphas per group (per row when group_size is None)."""
    n_groups = 1 if group_size is None else math.ceil(cols / group_size)
    return bits + 16 * bits * rows * n_groups / (rows * cols)


def _refit_alphas(groups: torch.Tensor, codes: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Least-squares alphas [M, G, q] given codes [M, G, g, q] (padded entries masked)."""
    b = codes * mask[..., None]
    gram = b.transpose(-1, -2) @ b  # [M, G, q, q]
    rhs = (b.transpose(-1, -2) @ groups[..., None])  # [M, G, q, 1]
    # pinv: identical codes (e.g. a constant group) make the system singular.
    return (torch.linalg.pinv(gram) @ rhs)[..., 0]


def _best_codes(groups: torch.Tensor, alphas: torch.Tensor) -> torch.Tensor:
    """For each weight, the code in {-1,+1}^q whose value sum_i alpha_i c_i is nearest."""
    q = alphas.shape[-1]
    table = torch.tensor(list(itertools.product((-1.0, 1.0), repeat=q)))  # [2^q, q]
    values = alphas @ table.T  # [M, G, 2^q]
    choice = (groups[..., None] - values[:, :, None, :]).abs().argmin(-1)  # [M, G, g]
    return table[choice]  # [M, G, g, q]


def bcq_quantize(w: torch.Tensor, bits: int, group_size: int | None = None,
                 iterations: int = 10) -> Quantized:
    """Binary-coding quantisation with `bits` binary planes, built one plane at a time:
    plane i starts as the sign of the current residual with alpha = mean |residual|,
    then `iterations` rounds of alternating exact refits over all planes so far. Each
    refit step is an exact minimisation, so the error never grows with iterations, and
    since plane i+1 starts from the refined i-plane solution, never with more bits."""
    w = _check_matrix(w)
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be in 1..8, got {bits}")
    groups, cols = _groups(w, group_size)
    mask = (torch.arange(groups.shape[1] * groups.shape[2]).reshape(groups.shape[1:]) < cols).float()
    counts = mask.sum(-1)  # real weights per group
    codes = groups.new_zeros(*groups.shape, 0)
    alphas = groups.new_zeros(*groups.shape[:2], 0)
    for _ in range(bits):
        residual = (groups - (codes * alphas[:, :, None, :]).sum(-1)) * mask
        sign = torch.where(residual >= 0, 1.0, -1.0)
        alpha = residual.abs().sum(-1) / counts
        codes = torch.cat([codes, sign[..., None]], -1)
        alphas = torch.cat([alphas, alpha[..., None]], -1)
        for _ in range(iterations):
            alphas = _refit_alphas(groups, codes, mask)
            codes = _best_codes(groups, alphas)
    alphas = _fp16(alphas)
    codes = _best_codes(groups, alphas)  # best codes for the stored (fp16) alphas
    name = f"bcq{bits}-" + ("row" if group_size is None else f"g{group_size}")
    return Quantized(name, _ungroup((codes * alphas[:, :, None, :]).sum(-1), cols),
                     bcq_bits_per_weight(bits, group_size, *w.shape))


# ---------------------------------------------------------------------------------------
# truncated SVD

def svd_bits_per_weight(rank: int, rows: int, cols: int) -> float:
    """fp16 factors U' [M, r] and V' [r, K]."""
    return 16 * rank * (rows + cols) / (rows * cols)


def svd_rank_for_bits(bits_per_weight: float, rows: int, cols: int) -> int:
    """Largest rank whose fp16 factors fit the budget (at least 1, at most min(M, K))."""
    rank = math.floor(bits_per_weight * rows * cols / (16 * (rows + cols)))
    return max(1, min(rank, rows, cols))


def svd_quantize(w: torch.Tensor, bits_per_weight: float | None = None,
                 rank: int | None = None) -> Quantized:
    """Truncated SVD W ~= (U sqrt(S)) (sqrt(S) V^T), factors stored in fp16. Give the
    budget in bits per weight or the rank directly."""
    w = _check_matrix(w)
    rows, cols = w.shape
    if (bits_per_weight is None) == (rank is None):
        raise ValueError("give exactly one of bits_per_weight and rank")
    if rank is None:
        rank = svd_rank_for_bits(bits_per_weight, rows, cols)
    if not 1 <= rank <= min(rows, cols):
        raise ValueError(f"rank must be in 1..{min(rows, cols)}, got {rank}")
    u, s, vh = torch.linalg.svd(w.double(), full_matrices=False)
    root = s[:rank].sqrt()
    left = _fp16((u[:, :rank] * root).float())  # splitting sqrt(S) keeps both in fp16 range
    right = _fp16((root[:, None] * vh[:rank]).float())
    return Quantized(f"svd-r{rank}", left @ right, svd_bits_per_weight(rank, rows, cols))
