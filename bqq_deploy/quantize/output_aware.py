"""Output-aware bits: the binary factors solved on a layer's output error (calibrated BQQ).

Objective of a layer with calibration inputs x: L(W_hat) = tr((W - W_hat) H (W - W_hat)^T),
H = E[x x^T] (+ ridge), the mean squared output error. The blocks of one block column j are
coupled to the other block columns only through H, so the layer is solved as a sweep over
block columns with GPTQ's feed-forward in block form. With U the upper Cholesky factor of
H^-1 (H^-1 = U^T U) and U_jj its g_c x g_c diagonal block:

- once every later block column is re-fit to compensate, block column j's error E_j costs
  tr(E_j S_j E_j^T) with S_j = (U_jj^T U_jj)^-1, the Schur complement of H on columns >= j
  with the later columns eliminated;
- after block column j is quantised, the later columns of the target take that optimal
  compensation: W'_{>j} -= E_j U_jj^-1 U_{j,>j}.

Within a block column every block row is an independent problem in the metric S_j
(normalised to mean diagonal 1). Per greedy stack: the weight-error bits of the shipped
solver (SVD start + annealing, solver._annealed_bits) on the fed-forward target, then the
exact scales and exact greedy bit flips in the metric S_j (metric_scale_system,
metric_flips). The driver then refits every scale of the layer exactly on the true
objective with the original W (solver._calib_refit). Padding: padded input features get
H_pp = 1 (uncorrelated, so they feed nothing forward) and zero rows / columns in S_j, padded
output rows are masked by u, as everywhere in the solver.
"""

from __future__ import annotations

import contextlib
import math

import torch

from ..config import BQQConfig
from .solver import (StackSolution, _annealed_bits, _block_range, _reconstruct, _solve_spd,
                     mask, tile)

# ---------------------------------------------------------------------------------------
# one stack of a block batch in the metric S: blocks x [B, g_r, g_c] (zero on padding), row
# masks u [B, g_r], metrics S [B, g_c, g_c] (symmetric PSD, zero rows / columns on padded
# features), binary y [B, g_r, l], z [B, l, g_c] (zero on padding), scales s [B, 4]


def metric_scale_system(x, u, S, y, z):
    """Normal equations G s = r of min over (a, b, c, d) of sum_r u_r e_r S e_r^T, e = x - W_hat.

    No g_r x g_c product of the features is formed: with p = Y 1 (row sums), q = 1^T Z
    (column sums), sigma = S 1, QS = Z S, the Frobenius products <F_m S, F_n> of the four
    feature images (Y Z, p 1^T, u q^T, u 1^T) are l x l Grams and vectors, e.g.
    <Y Z S, Y Z> = sum((Y^T Y) o (QS Z^T)), <Y Z S, p 1^T> = (Y^T p) . (QS 1)."""
    qs = z @ S  # [B, l, g_c]
    sigma = S.sum(-1)  # [B, g_c]
    p = y.sum(-1)  # [B, g_r]
    q = z.sum(-2)  # [B, g_c]
    n_rows = u.sum(-1)
    col_p = y.sum(1)  # [B, l] = 1^T Y
    qs1 = qs.sum(-1)  # [B, l] = Z S 1
    sq = (S @ q[:, :, None])[..., 0]  # [B, g_c] = S q
    qs_q = (z @ sq[:, :, None])[..., 0]  # [B, l] = Z S q
    sig1, p_sum = sigma.sum(-1), p.sum(-1)
    g00 = ((y.transpose(1, 2) @ y) * (qs @ z.transpose(1, 2))).sum((1, 2))
    g01 = ((y * p[:, :, None]).sum(1) * qs1).sum(-1)
    g02 = (col_p * qs_q).sum(-1)
    g03 = (col_p * qs1).sum(-1)
    g11 = (p * p).sum(-1) * sig1
    g12 = p_sum * (sigma * q).sum(-1)
    g13 = p_sum * sig1
    g22 = n_rows * (sq * q).sum(-1)
    g23 = n_rows * (q * sigma).sum(-1)
    g33 = n_rows * sig1
    gram = torch.stack([g00, g01, g02, g03, g01, g11, g12, g13,
                        g02, g12, g22, g23, g03, g13, g23, g33], -1).reshape(-1, 4, 4)
    x_cols = x.sum(1)
    rhs = torch.stack([((x @ qs.transpose(1, 2)) * y).sum((1, 2)),
                       (p * (x @ sigma[:, :, None])[..., 0]).sum(-1),
                       (x_cols * sq).sum(-1), (x_cols * sigma).sum(-1)], -1)
    return gram, rhs


def metric_scales(x, u, S, y, z):
    return _solve_spd(*metric_scale_system(x, u, S, y, z))


def metric_sse(x, u, S, y, z, s):
    """sum_r u_r e_r S e_r^T per block."""
    e = (x - _reconstruct(y, z, s)) * u[:, :, None]
    return ((e @ S) * e).sum((1, 2))


def metric_flips(x, u, S, y, z, s, rounds: int):
    """Greedy exact bit flips that never raise the S-metric error; returns (y, z, s, rounds).

    Y: flipping y_rk changes only row r of W_hat, by +-(a z_k + b 1), and rows decouple in
    tr(E S E^T), so the best flip of every row is applied at once and the gains add exactly:
    gain = -2 sgn coef_k S e_r^T + coef_k S coef_k^T. Z: flipping z_kc changes column c by
    +-(a y_k + c) u; columns couple through S, so of the columns' best flips, in order of
    their own gain, the prefix with the lowest exact joint error is applied
    (_best_prefix_of_column_flips). Exact scales after each side."""
    um = u[:, :, None]
    diag = S.diagonal(dim1=1, dim2=2)  # [B, g_c]
    # A flip must gain more than round-off: relative to the block's own metric energy.
    tol = 1e-7 * ((x @ S) * x).sum((1, 2)).clamp_min(1e-30)
    used = 0
    for used in range(1, rounds + 1):
        a, b, _c, _d = (s[:, i, None, None] for i in range(4))
        err_s = ((x - _reconstruct(y, z, s)) * um) @ S
        coef = a * z + b  # [B, l, g_c]
        self_y = ((coef @ S) * coef).sum(-1)  # [B, l]
        gain = -2 * (1 - 2 * y) * (err_s @ coef.transpose(1, 2)) + self_y[:, None, :]
        best, idx = gain.min(-1)  # per row
        do = (best < -tol[:, None]) & (u > 0)
        bi, ri = do.nonzero(as_tuple=True)
        y[bi, ri, idx[bi, ri]] = 1 - y[bi, ri, idx[bi, ri]]
        flipped = len(bi)
        if flipped:
            s = metric_scales(x, u, S, y, z)
        a, _b, c, _d = (s[:, i, None, None] for i in range(4))
        err_s = ((x - _reconstruct(y, z, s)) * um) @ S
        col = (a * y + c) * um  # [B, g_r, l]
        self_z = (col * col).sum(1)[:, :, None] * diag[:, None, :]
        gain = -2 * (1 - 2 * z) * (col.transpose(1, 2) @ err_s) + self_z  # [B, l, g_c]
        best, idx = gain.min(-2)  # per column: its best flip
        z, n_flips = _best_prefix_of_column_flips(z, col, S, best, idx, tol)
        if n_flips:
            flipped += n_flips
            s = metric_scales(x, u, S, y, z)
        if flipped == 0:
            break
    return y, z, s, used


def _best_prefix_of_column_flips(z, col, S, best, idx, tol):
    """Apply, per block, the best prefix of the column flips sorted by single-flip gain.

    Flip i (column c_i, bit k_i, sign sgn_i) changes the error by gain_i alone; two flips
    interact through S: tr(D S D^T) of the sum of the rank-one changes adds
    2 sgn_i sgn_i' (col_i . col_i') S_{c_i c_i'} for every pair. The joint change of the
    first n flips is therefore cumsum(gain) + cumsum of the column sums of the strictly
    upper-triangular interaction matrix, exact; the best n (0 = none) never raises the
    error. Returns (z, number of flips)."""
    n_blocks, _, g_c = z.shape
    blocks = torch.arange(n_blocks, device=z.device)[:, None]
    order = best.argsort(-1)  # most negative gain first
    c_sorted = order
    k_sorted = idx.gather(-1, order)
    gain_sorted = best.gather(-1, order)
    valid = gain_sorted < -tol[:, None]
    sgn = 1 - 2 * z[blocks, k_sorted, c_sorted]  # [B, g_c]
    chosen = col.gather(2, k_sorted[:, None, :].expand(-1, col.shape[1], -1)) * sgn[:, None, :]
    s_sorted = S.gather(1, c_sorted[:, :, None].expand(-1, -1, g_c)).gather(2, c_sorted[:, None, :].expand(-1, g_c, -1))
    pair = 2 * (chosen.transpose(1, 2) @ chosen) * s_sorted
    total = torch.cumsum(torch.where(valid, gain_sorted, torch.zeros_like(gain_sorted)), -1)
    total = total + torch.cumsum(torch.triu(pair, 1).sum(-2), -1)
    total = torch.where(valid, total, torch.full_like(total, float("inf")))
    low, at = total.min(-1)
    count = torch.where(low < -tol, at + 1, torch.zeros_like(at))  # flips to apply per block
    take = torch.arange(g_c, device=z.device)[None, :] < count[:, None]
    bi, pos = take.nonzero(as_tuple=True)
    z = z.clone()
    z[bi, k_sorted[bi, pos], c_sorted[bi, pos]] = 1 - z[bi, k_sorted[bi, pos], c_sorted[bi, pos]]
    return z, len(bi)


def solve_stack_in_metric(x, u, v, S, cfg: BQQConfig, gen: torch.Generator, callback=None):
    """One greedy stack of blocks x in the metric S: weight-error bits (the annealing of
    solver._solve_stack, on the normalised block), then exact S-metric scales and flips."""
    rng = _block_range(x, u, v, cfg)
    xn = x / rng[:, None, None]
    y, z, steps = _annealed_bits(xn, u, v, cfg, gen, callback)
    s = metric_scales(xn, u, S, y, z)
    rounds = 0
    if cfg.flip_rounds > 0:
        y, z, s, rounds = metric_flips(xn, u, S, y, z, s, cfg.flip_rounds)
    return y, z, s * rng[:, None], {"steps": steps, "flip_rounds": rounds}


# ---------------------------------------------------------------------------------------
# the block-column sweep over one or more layers


class BlockMetrics:
    """S_j and the feed-forward map of every block column of one (damped) Hessian [K, K]."""

    def __init__(self, hessian: torch.Tensor, g_c: int):
        cols = hessian.shape[0]
        self.g_c, self.cols = g_c, cols
        self.n_cols = math.ceil(cols / g_c)
        k_pad = self.n_cols * g_c
        h = torch.eye(k_pad, dtype=torch.float64, device=hessian.device)
        h[:cols, :cols] = hessian.double()
        dead = h.diagonal() <= 0  # features never seen and not ridged: weight error only
        h[dead, dead] = 1
        self.u_inv = torch.linalg.cholesky(torch.cholesky_inverse(_cholesky(h)), upper=True)
        self.v = (torch.arange(k_pad, device=hessian.device) < cols).double().reshape(self.n_cols, g_c)

    def metric(self, j: int) -> torch.Tensor:
        """S_j / mean(real diag S_j), zero on padded features: [g_c, g_c] float64."""
        blk = slice(j * self.g_c, (j + 1) * self.g_c)
        s = torch.cholesky_inverse(self.u_inv[blk, blk], upper=True)
        v = self.v[j]
        s = s * v[:, None] * v[None, :]
        return s / (s.diagonal().sum() / v.sum())

    def feed_forward(self, j: int) -> torch.Tensor:
        """U_jj^-1 U_{j,>j}: [g_c, K_pad - (j+1) g_c]; error E_j [M, g_c] moves the later
        columns of the target by -E_j @ this."""
        blk = slice(j * self.g_c, (j + 1) * self.g_c)
        later = self.u_inv[blk, (j + 1) * self.g_c:]
        return torch.linalg.solve_triangular(self.u_inv[blk, blk], later, upper=True)


def _cholesky(h: torch.Tensor) -> torch.Tensor:
    """Lower Cholesky factor of an SPD matrix that may be singular to round-off (few
    calibration rows, no ridge): jitter on the diagonal until it factors."""
    factor, info = torch.linalg.cholesky_ex(h)
    jitter = 1e-10 * float(h.diagonal().mean())
    while int(info) != 0:
        factor, info = torch.linalg.cholesky_ex(h + jitter * torch.eye(len(h), dtype=h.dtype, device=h.device))
        jitter *= 10
    return factor


def sweep(weights: list[torch.Tensor], metrics: list[BlockMetrics], stacks: list[int],
          cfg: BQQConfig, gen: torch.Generator, progress=None, threads=None) -> list[StackSolution]:
    """Output-aware greedy stacks of several layers; layer i has weight [M_i, K_i], block
    metrics metrics[i] (layers that read the same input share one object) and stacks[i]
    stacks. Block column j of every layer that has one is solved as one batch, so layers
    with short sweeps cost little. progress(n): n more weight-stacks done; threads(n): a
    context manager for a block batch of n padded weights (the driver's CPU thread
    policy). Returns each layer's solution: bits and per-stack S-metric scales in solver
    block order."""
    g_r, g_c = cfg.group_shape
    device = weights[0].device
    state = []
    for w, metric in zip(weights, metrics):
        rows, cols = w.shape
        n_rb = math.ceil(rows / g_r)
        target = torch.zeros(n_rb * g_r, metric.n_cols * g_c, dtype=torch.float64, device=device)
        target[:rows, :cols] = w.double()
        u = (torch.arange(n_rb * g_r, device=device) < rows).float().reshape(n_rb, g_r)
        state.append({"target": target, "u": u, "n_rb": n_rb, "columns": [], "steps": [], "rounds": []})
    for j in range(max(m.n_cols for m in metrics)):
        live = [i for i, m in enumerate(metrics) if m.n_cols > j]
        metric_of = {}
        for i in live:
            if id(metrics[i]) not in metric_of:
                metric_of[id(metrics[i])] = metrics[i].metric(j).float()
        cols = slice(j * g_c, (j + 1) * g_c)
        n_rb = [state[i]["n_rb"] for i in live]
        x = torch.cat([state[i]["target"][:, cols].float().reshape(n, g_r, g_c) for i, n in zip(live, n_rb)])
        u = torch.cat([state[i]["u"] for i in live])
        v = torch.cat([metrics[i].v[j].float().expand(n, g_c) for i, n in zip(live, n_rb)])
        S = torch.cat([metric_of[id(metrics[i])].expand(n, g_c, g_c) for i, n in zip(live, n_rb)])
        depth = torch.cat([torch.full((n,), stacks[i], device=device) for i, n in zip(live, n_rb)])
        with (threads or _no_policy)(x.numel()):
            residual, found = _column_stacks(x, u, v, S, depth, cfg, gen, progress)
        lo = 0
        for i, n in zip(live, n_rb):
            hi = lo + n
            column = []
            for pick, y, z, s, stats in found[:stacks[i]]:
                at = torch.searchsorted(pick, torch.arange(lo, hi, device=device))
                column.append((y[at], z[at], s[at]))
                state[i]["steps"].append(stats["steps"])
                state[i]["rounds"].append(stats["flip_rounds"])
            state[i]["columns"].append(column)
            if j + 1 < metrics[i].n_cols:
                err = residual[lo:hi].double().reshape(-1, g_c)  # E_j (zero on padding)
                state[i]["target"][:, (j + 1) * g_c:] -= err @ metrics[i].feed_forward(j)
            lo = hi
    return [_solution(w, st, cfg) for w, st in zip(weights, state)]


def _column_stacks(x, u, v, S, depth, cfg: BQQConfig, gen, progress):
    """Greedy stacks of one block column batch (block b gets depth[b] stacks). Returns the
    masked residual and per stack (blocks solved, y, z, s, stats)."""
    m = mask(u, v)
    residual = x * m
    found = []
    for k in range(int(depth.max())):
        pick = (depth > k).nonzero().flatten()
        sub = slice(None) if len(pick) == len(depth) else pick
        y, z, s, stats = solve_stack_in_metric(residual[sub], u[sub], v[sub], S[sub], cfg, gen)
        residual[sub] -= _reconstruct(y, z, s) * m[sub]
        found.append((pick, y, z, s, stats))
        if progress is not None:
            progress(float(m[sub].sum()))
    return residual, found


@contextlib.contextmanager
def _no_policy(_n_weights):
    yield


def _solution(weight, st, cfg: BQQConfig) -> StackSolution:
    """Per-column bits [C][p] (each [R, ...]) in solver block order (i, j) row-major."""
    g_r, g_c = cfg.group_shape
    x, u, v = tile(weight.float(), g_r, g_c)
    columns, n_rb = st["columns"], st["n_rb"]
    p = len(columns[0])

    def gather(part: int, k: int) -> torch.Tensor:
        per_col = torch.stack([col[k][part] for col in columns], 1)  # [R, C, ...]
        return per_col.reshape(n_rb * len(columns), *per_col.shape[2:])

    ys, zs = [gather(0, k) for k in range(p)], [gather(1, k) for k in range(p)]
    sol = StackSolution(x, u, v, ys, zs, torch.stack([gather(2, k) for k in range(p)]), [])
    approx = torch.zeros_like(x)
    m = mask(u, v)
    for y, z, s in zip(ys, zs, sol.scales):
        approx = approx + _reconstruct(y, z, s) * m
        sol.residuals.append(x - approx)
    # Per stack: the most annealing steps / flip rounds any block column used.
    sol.steps = [max(st["steps"][k::p]) for k in range(p)]
    sol.flip_rounds = [max(st["rounds"][k::p]) for k in range(p)]
    return sol
