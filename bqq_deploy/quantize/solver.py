"""The BQQ solver's mathematics, batched over blocks: block tiling, the exact 4x4 scale solve,
the annealed mean-field descent of the paper from an SVD-sign warm start, exact greedy bit
flips, greedy stacks with a joint scale refit, and the output-aware (calibrated) scale refit.
No I/O, threads, caching or progress here: bqq_deploy.quantize.driver runs these on layers.

Conventions (B = blocks of one or more layers):
  x  [B, g_r, g_c]  target block (residual of earlier stacks), zero on padded entries
  u  [B, g_r], v [B, g_c]  1 on real rows / columns, 0 on padding; the entry mask is u v^T,
                    so padding never counts in any error, Gram matrix or gradient
  y  [B, g_r, l],   z [B, l, g_c]   the binary factors (relaxed to [0, 1] while annealing)
  s  [B, 4]         the scalars a, b, c, d of one stack
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..config import BQQConfig

# ---------------------------------------------------------------------------------------
# block tiling


def tile(weight: torch.Tensor, g_r: int, g_c: int):
    """[M, K] -> blocks [R*C, g_r, g_c] (zero padded) and the row / column masks u, v."""
    rows, cols = weight.shape
    n_rb, n_cb = math.ceil(rows / g_r), math.ceil(cols / g_c)
    padded = torch.nn.functional.pad(weight, (0, n_cb * g_c - cols, 0, n_rb * g_r - rows))
    blocks = padded.reshape(n_rb, g_r, n_cb, g_c).permute(0, 2, 1, 3).reshape(-1, g_r, g_c)
    row_mask = (torch.arange(n_rb * g_r, device=weight.device) < rows).to(weight.dtype)
    col_mask = (torch.arange(n_cb * g_c, device=weight.device) < cols).to(weight.dtype)
    u = row_mask.reshape(n_rb, 1, g_r).expand(n_rb, n_cb, g_r).reshape(-1, g_r)
    v = col_mask.reshape(1, n_cb, g_c).expand(n_rb, n_cb, g_c).reshape(-1, g_c)
    return blocks.contiguous(), u.contiguous(), v.contiguous()


def untile(blocks: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """Inverse of tile: [R*C, g_r, g_c] -> [M, K]."""
    _, g_r, g_c = blocks.shape
    n_rb, n_cb = math.ceil(rows / g_r), math.ceil(cols / g_c)
    dense = blocks.reshape(n_rb, n_cb, g_r, g_c).permute(0, 2, 1, 3).reshape(n_rb * g_r, n_cb * g_c)
    return dense[:rows, :cols]


def mask(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return u[:, :, None] * v[:, None, :]


# ---------------------------------------------------------------------------------------
# one stack: the exact 4x4 scale solve

_PINV_RTOL = 1e-7  # relative eigenvalue cut-off of the pseudo-inverse


def _sums(x):
    """Row sums, column sums and total of blocks x [B, g_r, g_c]."""
    rows = x.sum(-1)
    return rows, x.sum(-2), rows.sum(-1)


def _scale_system(x, u, v, y, z, x_sums=None, scratch: dict | None = None):
    """Normal equations G s = r of the masked least-squares fit of (a, b, c, d) to x.

    For relaxed y, z this is the mean-field (expected) energy of independent Bernoulli bits,
    as in the paper; for binary y, z the variance corrections vanish and it is the exact fit.
    Requires x, y, z to be zero on padding (rows of y where u = 0, columns of z where
    v = 0); then no [g_r, g_c] product is formed: the sum of (Y Z)^2 is the Frobenius
    product of the l x l Grams Y^T Y and Z Z^T, and row / column sums of Y Z are products
    with vectors. x_sums: _sums(x), and scratch: a dict of reusable buffers, for callers
    that solve the same x many times.
    """
    batch, g_r, rank = y.shape

    def buffer(key, *shape):
        if scratch is None:
            return None
        if key not in scratch:
            scratch[key] = x.new_empty(shape)
        return scratch[key]

    yty = torch.bmm(y.transpose(1, 2), y, out=buffer("yty", batch, rank, rank))  # [B, l, l]
    zzt = torch.bmm(z, z.transpose(1, 2), out=buffer("zzt", batch, rank, rank))
    uy, uy2 = y.sum(1), yty.diagonal(dim1=1, dim2=2)  # [B, l]: sum_i y_ik, sum_i y_ik^2
    zv, z2v = z.sum(-1), zzt.diagonal(dim1=1, dim2=2)
    sy, sz = y.sum(-1), z.sum(-2)  # [B, g_r], [B, g_c]
    yz_v = (y @ zv.unsqueeze(-1)).squeeze(-1)  # row sums of Y Z
    u_yz = (uy.unsqueeze(1) @ z).squeeze(1)  # column sums of Y Z
    nu, nv = u.sum(-1), v.sum(-1)
    uy_zv = (uy * zv).sum(-1)  # = sum of Y Z
    g00 = (yty * zzt).sum((1, 2)) + uy_zv - (uy2 * z2v).sum(-1)
    g01 = ((sy + 1) * yz_v).sum(-1) - (uy2 * zv).sum(-1)
    g02 = ((sz + 1) * u_yz).sum(-1) - (uy * z2v).sum(-1)
    usy, vsz = sy.sum(-1), sz.sum(-1)
    g11 = nv * ((sy * sy).sum(-1) + usy - uy2.sum(-1))
    g12 = usy * vsz
    g13 = nv * usy
    g22 = nu * ((sz * sz).sum(-1) + vsz - z2v.sum(-1))
    g23 = nu * vsz
    g33 = nu * nv
    gram = torch.stack([g00, g01, g02, uy_zv, g01, g11, g12, g13,
                        g02, g12, g22, g23, uy_zv, g13, g23, g33], -1).reshape(-1, 4, 4)
    x_rows, x_cols, x_total = _sums(x) if x_sums is None else x_sums
    xz = torch.bmm(x, z.transpose(1, 2), out=buffer("xz", batch, g_r, rank))
    rhs = torch.stack([xz.mul_(y).sum((1, 2)), (sy * x_rows).sum(-1),
                       (sz * x_cols).sum(-1), x_total], -1)
    return gram, rhs


def _solve_spd(gram: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """Batched exact least squares from normal equations, robust to (near-)singular Grams.

    Jacobi-scaled, then a pseudo-inverse through the symmetric eigendecomposition in float64:
    directions with eigenvalue below 1e-7 of the largest are dropped. Collinear features
    (an all-zero Y, a block with one real column, ...) thus get the minimum-norm solution
    instead of huge cancelling scales that would overflow fp16.
    """
    g64, r64 = gram.double(), rhs.double()
    diag = g64.diagonal(dim1=-2, dim2=-1)
    scale = torch.where(diag > 0, diag.sqrt(), torch.ones_like(diag))
    g_n = g64 / (scale[..., :, None] * scale[..., None, :])
    evals, evecs = torch.linalg.eigh(g_n)
    keep = evals > _PINV_RTOL * evals[..., -1:].clamp_min(1e-300)
    inv = torch.where(keep, 1 / torch.where(keep, evals, torch.ones_like(evals)), torch.zeros_like(evals))
    r_n = r64 / scale
    sol = evecs @ (inv * (evecs.transpose(-1, -2) @ r_n.unsqueeze(-1)).squeeze(-1)).unsqueeze(-1)
    return (sol.squeeze(-1) / scale).to(gram.dtype)


def _solve_spd_fast(gram: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """_solve_spd for the annealing loop: the relaxed (mean-field) Gram carries variance terms
    and is positive definite in practice, so a Cholesky solve suffices; the rare failure
    falls back to the pseudo-inverse."""
    g64, r64 = gram.double(), rhs.double()
    factor, info = torch.linalg.cholesky_ex(g64)
    sol = torch.cholesky_solve(r64.unsqueeze(-1), factor).squeeze(-1)
    bad = (info != 0) | ~torch.isfinite(sol).all(-1)
    if bool(bad.any()):
        sol[bad] = _solve_spd(g64[bad], r64[bad])
    return sol.to(gram.dtype)


def _solve_scales(x, u, v, y, z):
    """Exact scales of binary y, z (any values on padding: masked here)."""
    return _solve_spd(*_scale_system(x * mask(u, v), u, v, y * u[:, :, None], z * v[:, None, :]))


def _reconstruct(y, z, s):
    a, b, c, d = (s[:, i, None, None] for i in range(4))
    return a * (y @ z) + b * y.sum(-1, keepdim=True) + c * z.sum(-2, keepdim=True) + d


def _block_sse(x, u, v, y, z, s):
    return (((_reconstruct(y, z, s) - x) ** 2) * mask(u, v)).sum((1, 2))


# ---------------------------------------------------------------------------------------
# one stack: annealed mean-field descent (paper) and its warm start


def _svd_sign_init(x, u, v, rank: int, gen: torch.Generator):
    """Y = [U > 0], Z = [V^T > 0] of the rank-l truncated SVD of the (masked) block."""
    xm = x * mask(u, v)
    left, _, right_t = torch.linalg.svd(xm, full_matrices=False)
    k = min(rank, left.shape[-1])
    y = (left[..., :k] > 0).to(x.dtype)
    z = (right_t[..., :k, :] > 0).to(x.dtype)
    if k < rank:  # rank_scale > 1: more bits than singular vectors; fill randomly
        batch, g_r, g_c = x.shape
        extra_y = (torch.rand(batch, g_r, rank - k, generator=gen, device=x.device) > 0.5)
        extra_z = (torch.rand(batch, rank - k, g_c, generator=gen, device=x.device) > 0.5)
        y = torch.cat([y, extra_y.to(x.dtype)], -1)
        z = torch.cat([z, extra_z.to(x.dtype)], -2)
    return y, z


def _anneal(x, u, v, y, z, steps: int, cfg: BQQConfig, t_start: float, t_end: float,
            eta: float, callback=None):
    """The paper's annealed mean-field descent from relaxed (y, z); returns relaxed (y, z).

    Momentum step at the extrapolated point (zeta), step eta on the mean-field energy
    gradient plus the entropy term T (y - 0.5), clamp to [0, 1], exact scale solve every
    cfg.scale_interval steps (the paper: every step) and after the last, T linear from
    t_start to t_end. Stops early when every block's relaxed energy changed by less than
    cfg.early_stop_tol (relative) over the last window.

    Written for few passes over memory (the step is bound by them on a CPU, not by the
    products): the residual is one fused product of augmented factors, each gradient is
    one product plus a per-column affine term in y (resp. z), and the update is fused into
    that product. Padded rows of y and columns of z are held at zero, which is what lets
    _scale_system and the gradient drop the masks.
    """
    if steps <= 0:
        return y, z, 0
    batch, g_r, g_c = x.shape
    rank = y.shape[-1]
    zeta = cfg.zeta
    u3, v3 = u[:, :, None], v[:, None, :]
    padded = not bool((u > 0).all() and (v > 0).all())
    m = mask(u, v) if padded else None
    # The paper starts with a small velocity towards 0.5.
    y_prev = ((y - eta * (y - 0.5)) * u3).contiguous()
    z_prev = ((z - eta * (z - 0.5)) * v3).contiguous()
    y, z = y_prev.clone(), z_prev.clone()
    # Every full-size tensor lives in a buffer allocated once: on a CPU, fresh allocations
    # of this size cost page faults that took more time than the arithmetic.
    y_next, z_next = torch.empty_like(y), torch.empty_like(z)
    yf, y_coef, z_coef = torch.empty_like(y), torch.empty_like(y), torch.empty_like(z)
    y_aug = x.new_ones(batch, g_r, rank + 2)  # [a yf, 1, b sum(yf) + d]
    z_aug = x.new_ones(batch, rank + 2, g_c)  # [zf; c sum(zf); 1]
    zf = z_aug[:, :rank]
    part = torch.empty_like(x)
    scratch: dict = {}
    x_sums = _sums(x)
    gram, rhs = _scale_system(x, u, v, y, z, x_sums, scratch)
    s = _solve_spd_fast(gram, rhs)
    nu3, nv3 = u.sum(-1)[:, None, None], v.sum(-1)[:, None, None]
    x_energy = (x * x).sum((1, 2))
    delta_t = (t_start - t_end) / max(steps - 1, 1)
    window = max(50, steps // 20)
    last_energy = None
    done = 0
    for step in range(steps):
        temp = t_start - step * delta_t
        a, b, c, d = (s[:, i, None, None] for i in range(4))
        torch.sub(y, y_prev, out=yf).mul_(zeta).add_(y)  # extrapolated points
        torch.sub(z, z_prev, out=zf).mul_(zeta).add_(z)
        # part = (x - W_hat(yf, zf)) * mask as one product of the augmented factors
        torch.mul(yf, a, out=y_aug[..., :rank])
        y_aug[..., rank + 1:] = b * yf.sum(-1, keepdim=True) + d
        z_aug[:, rank:rank + 1] = c * zf.sum(-2, keepdim=True)
        part.copy_(x).baddbmm_(y_aug, z_aug, alpha=-1)
        if padded:
            part.mul_(m)
        # Mean-field gradient in y: -2 part (a zf + b)^T + c0 + yf * c1, where c0, c1 (one
        # value per column of y) carry the variance terms of the expected energy; in z
        # likewise with d0, d1.
        zf_v, zf2_v = zf.sum(-1)[:, None, :], torch.mul(zf, zf, out=z_coef).sum(-1)[:, None, :]
        yf_u, yf2_u = yf.sum(1)[:, :, None], torch.mul(yf, yf, out=y_coef).sum(1)[:, :, None]
        c0 = (a * a + 2 * a * b + 2 * a * c) * zf_v - 2 * a * c * zf2_v + b * b * nv3
        c1 = -4 * a * b * zf_v - 2 * a * a * zf2_v - 2 * b * b * nv3
        d0 = (a * a + 2 * a * b + 2 * a * c) * yf_u - 2 * a * b * yf2_u + c * c * nu3
        d1 = -4 * a * c * yf_u - 2 * a * a * yf2_u - 2 * c * c * nu3
        # y <- clamp(2 y - y_prev - eta (grad + T (y - 0.5)), 0, 1), the product term last
        keep = 2 - eta * temp
        torch.mul(yf, -eta * c1, out=y_next).add_(eta * (temp / 2 - c0))
        torch.mul(zf, a, out=z_coef).add_(b)
        y_next.add_(y, alpha=keep).sub_(y_prev)
        y_next.baddbmm_(part, z_coef.transpose(1, 2), alpha=2 * eta).clamp_(0, 1)
        torch.mul(zf, -eta * d1, out=z_next).add_(eta * (temp / 2 - d0))
        torch.mul(yf, a, out=y_coef).add_(c)
        z_next.add_(z, alpha=keep).sub_(z_prev)
        z_next.baddbmm_(y_coef.transpose(1, 2), part, alpha=2 * eta).clamp_(0, 1)
        if padded:
            y_next.mul_(u3)
            z_next.mul_(v3)
        y_prev, y, y_next = y, y_next, y_prev
        z_prev, z, z_next = z, z_next, z_prev
        done = step + 1
        check = cfg.early_stop_tol > 0 and done % window == 0
        if done % cfg.scale_interval == 0 or done == steps or check:
            gram, rhs = _scale_system(x, u, v, y, z, x_sums, scratch)
            s = _solve_spd_fast(gram, rhs)
        if callback is not None:
            callback(1)
        if check:
            # At the optimal scales the relaxed energy is |x|^2 - s.r (no extra work: a
            # check step always solves).
            energy = x_energy - (s * rhs).sum(-1)
            if last_energy is not None:
                change = (last_energy - energy).abs() / (x_energy + 1e-30)
                if bool((change < cfg.early_stop_tol).all()):
                    break
            last_energy = energy
    return y, z, done


# ---------------------------------------------------------------------------------------
# one stack: exact discrete improvement after thresholding


def _flip_improve(x, u, v, y, z, s, rounds: int):
    """Greedy bit flips that provably lower the masked squared error.

    Given Z and the scales, rows of W_hat depend on disjoint rows of Y, so flipping the one
    best bit of every row at once lowers the error by the sum of the single-flip gains;
    likewise for columns of Z. Alternates Y, Z and an exact scale refit until no flip
    helps or `rounds` is spent. Returns (y, z, s, rounds used).
    """
    m = mask(u, v)
    nu, nv = u.sum(-1), v.sum(-1)
    used = 0
    for used in range(1, rounds + 1):
        flipped = 0
        for side in ("y", "z"):
            a, b, c, _ = (s[:, i, None, None] for i in range(4))
            err = (_reconstruct(y, z, s) - x) * m  # [B, g_r, g_c]
            if side == "y":
                coef = a * z + b  # row q of it: the change of a W_hat row when y[:, q] flips
                cross = err @ coef.transpose(1, 2)  # [B, g_r, l]
                self_term = ((a * a + 2 * a * b) * (z * v[:, None, :]).sum(-1)[:, None, :]
                             + (b * b) * nv[:, None, None])
                gain = 2 * (1 - 2 * y) * cross + u[:, :, None] * self_term
                best, idx = gain.min(-1)  # per row
                do = best < -1e-7 * (x * x * m).sum((1, 2))[:, None].clamp_min(1e-30)
                rows = do.nonzero(as_tuple=True)
                y[rows[0], rows[1], idx[rows]] = 1 - y[rows[0], rows[1], idx[rows]]
            else:
                coef = a * y + c  # column q: the change of a W_hat column when z[q, :] flips
                cross = coef.transpose(1, 2) @ err  # [B, l, g_c]
                self_term = ((a * a + 2 * a * c) * (y * u[:, :, None]).sum(1)[:, :, None]
                             + (c * c) * nu[:, None, None])
                gain = 2 * (1 - 2 * z) * cross + v[:, None, :] * self_term
                best, idx = gain.min(-2)  # per column
                do = best < -1e-7 * (x * x * m).sum((1, 2))[:, None].clamp_min(1e-30)
                cols = do.nonzero(as_tuple=True)
                z[cols[0], idx[cols], cols[1]] = 1 - z[cols[0], idx[cols], cols[1]]
            flipped += int(do.sum())
        s = _solve_scales(x, u, v, y, z)
        if flipped == 0:
            break
    return y, z, s, used


def _block_range(x, u, v, cfg: BQQConfig) -> torch.Tensor:
    """Per-block divisor [B] that brings blocks to the spread the annealing step assumes.

    The paper divides by the range (max - min); the warm-start path divides by warm_norm x
    the RMS, the same for a Gaussian block (64x64: range ~ 7.5 sigma) but not shrunk by
    outliers, which left heavy-tailed blocks' bulk tiny and effectively over-heated."""
    m = mask(u, v)
    if cfg.init == "svd":
        rms = ((x * x * m).sum((1, 2)) / m.sum((1, 2)).clamp_min(1)).sqrt()
        rng = cfg.warm_norm * rms
    else:
        big = torch.finfo(x.dtype).max
        hi = torch.where(m > 0, x, torch.full_like(x, -big)).amax((1, 2))
        lo = torch.where(m > 0, x, torch.full_like(x, big)).amin((1, 2))
        rng = (hi - lo).clamp_min(0)
    return torch.where(rng > 0, rng, torch.ones_like(rng))


def _annealed_bits(xn, u, v, cfg: BQQConfig, gen: torch.Generator, callback=None):
    """Binary y, z of one stack of normalised blocks xn (start, annealing, threshold) and
    the annealing steps run."""
    batch, g_r, g_c = xn.shape
    rank = cfg.rank
    if cfg.init == "svd":
        y, z = _svd_sign_init(xn, u, v, rank, gen)
        t_start, t_end = cfg.warm_t_start, cfg.warm_t_end
        if cfg.steps > 0:  # soften the signs so annealing can still move them
            y = 0.5 + cfg.warm_strength * (y - 0.5)
            z = 0.5 + cfg.warm_strength * (z - 0.5)
    else:
        y = torch.rand(batch, g_r, rank, generator=gen, device=xn.device, dtype=xn.dtype)
        z = torch.rand(batch, rank, g_c, generator=gen, device=xn.device, dtype=xn.dtype)
        t_start, t_end = cfg.t_start, cfg.t_end
    eta = cfg.warm_eta if cfg.init == "svd" else cfg.eta
    y, z, steps = _anneal(xn, u, v, y, z, cfg.steps, cfg, t_start, t_end, eta, callback)
    if callback is not None and steps < cfg.steps:
        callback(cfg.steps - steps)
    y = (y > 0.5).to(xn.dtype) * u[:, :, None]  # padded rows carry no bits
    z = (z > 0.5).to(xn.dtype) * v[:, None, :]
    return y, z, steps


def _solve_stack(x, u, v, cfg: BQQConfig, gen: torch.Generator, callback=None):
    """Binary y, z and scales s for one stack of every block in the batch."""
    rng = _block_range(x, u, v, cfg)
    xn = x / rng[:, None, None]
    stats = {}
    y, z, stats["steps"] = _annealed_bits(xn, u, v, cfg, gen, callback)
    s = _solve_scales(xn, u, v, y, z)
    stats["flip_rounds"] = 0
    if cfg.flip_rounds > 0:
        y, z, s, stats["flip_rounds"] = _flip_improve(xn, u, v, y, z, s, cfg.flip_rounds)
    return y, z, s * rng[:, None], stats


# ---------------------------------------------------------------------------------------
# all stacks: joint refinement, calibration, fp16 storage


def _features(ys, zs):
    """Basis images of every scale: [B, 3p+1, g_r, g_c] (a_k, b_k, c_k for each stack,
    then one shared d, since the d of all stacks only ever appear as their sum)."""
    feats = []
    for y, z in zip(ys, zs):
        feats += [y @ z, y.sum(-1, keepdim=True).expand(-1, -1, z.shape[-1]),
                  z.sum(-2, keepdim=True).expand(-1, y.shape[1], -1)]
    feats.append(torch.ones_like(feats[0]))
    return torch.stack(feats, 1)


def _scales_from_joint(sol: torch.Tensor, stacks: int) -> torch.Tensor:
    """[B, 3p+1] joint solution -> [p, B, 4] with the shared d stored in stack 0."""
    out = sol.new_zeros(stacks, sol.shape[0], 4)
    for k in range(stacks):
        out[k, :, :3] = sol[:, 3 * k: 3 * k + 3]
    out[0, :, 3] = sol[:, -1]
    return out


def _joint_refit(x, u, v, ys, zs) -> torch.Tensor:
    """Least-squares re-solve of all stacks' scales together (3p+1 unknowns per block)."""
    feats = _features(ys, zs) * mask(u, v)[:, None]
    flat = feats.flatten(2)
    gram = flat @ flat.transpose(1, 2)
    rhs = (flat * x.flatten(1)[:, None, :]).sum(-1)
    return _scales_from_joint(_solve_spd(gram, rhs), len(ys))


def _refit_d_after_rounding(x, u, v, ys, zs, scales16: torch.Tensor) -> torch.Tensor:
    """With a, b, c rounded to fp16, the best shared d is the masked mean of what is left;
    refit it (in stack 0) and round again. Returns new fp16 scales [p, B, 4]."""
    scales = scales16.float()
    no_d = scales.clone()
    no_d[..., 3] = 0
    approx = sum(_reconstruct(y, z, s) for y, z, s in zip(ys, zs, no_d))
    m = mask(u, v)
    d = ((x - approx) * m).sum((1, 2)) / m.sum((1, 2)).clamp_min(1)
    out = no_d
    out[0, :, 3] = d
    return out.half()


def _calib_refit(weight, ys, zs, u, v, hessian, grid):
    """Scales minimising tr((W - W_hat) H (W - W_hat)^T) with H = X^T X (damped).

    W_hat is linear in the scales; within one block row the unknowns of all its blocks
    couple through H, so each block row is one exact least-squares problem with
    C*(3p+1) unknowns. Returns [p, R*C, 4] scales (shared d of each block in stack 0).
    """
    n_rb, n_cb = grid
    g_r, g_c = ys[0].shape[1], zs[0].shape[2]
    n_feat = 3 * len(ys) + 1
    # float64: the normal equations square the conditioning of the output-space problem.
    hessian, weight = hessian.double(), weight.double()
    feats = (_features(ys, zs) * mask(u, v)[:, None]).double()  # [R*C, F, g_r, g_c]
    feats = feats.reshape(n_rb, n_cb, n_feat, g_r, g_c)
    k_pad = n_cb * g_c
    h = torch.zeros(k_pad, k_pad, dtype=hessian.dtype, device=hessian.device)
    h[: hessian.shape[0], : hessian.shape[1]] = hessian
    h_blocks = h.reshape(n_cb, g_c, n_cb, g_c)  # [j, c, j', c']
    rows, cols = weight.shape
    w_pad = torch.nn.functional.pad(weight, (0, k_pad - cols, 0, n_rb * g_r - rows))
    sols = []
    for i in range(n_rb):
        f = feats[i]  # [C, F, g_r, g_c]
        # F_n H restricted to block column j': (f_n @ H[j, j']) for block j of feature n.
        fh = torch.einsum("jfrc,jcke->jfrke", f, h_blocks)  # [C, F, g_r, C, g_c]
        gram = torch.einsum("jfrke,kgre->jfkg", fh, f).reshape(n_cb * n_feat, n_cb * n_feat)
        w_i = w_pad[i * g_r:(i + 1) * g_r].reshape(g_r, n_cb, g_c)
        rhs = torch.einsum("jfrke,rke->jf", fh, w_i).reshape(-1)
        sols.append(_solve_spd(gram[None], rhs[None])[0].reshape(n_cb, n_feat))
    return _scales_from_joint(torch.cat(sols), len(ys)).float()


def _stored_sse(x, u, v, ys, zs, scales16) -> float:
    approx = sum(_reconstruct(y, z, s) for y, z, s in zip(ys, zs, scales16.float()))
    return float((((x - approx) ** 2) * mask(u, v)).sum())




# ---------------------------------------------------------------------------------------
# the two entry points of the driver: all stacks of a block batch, then one layer's scales


@dataclass
class StackSolution:
    """Bits and fp32 scales of every block of a batch after the greedy stacks (and the joint
    scale refit), with what the report shows about the solve."""

    x: torch.Tensor  # the blocks that were solved
    u: torch.Tensor
    v: torch.Tensor
    ys: list[torch.Tensor]
    zs: list[torch.Tensor]
    scales: torch.Tensor  # [p, B, 4]
    residuals: list[torch.Tensor] = field(repr=False)  # masked residual after each stack
    steps: list[int] = field(default_factory=list)  # annealing steps run per stack
    flip_rounds: list[int] = field(default_factory=list)

    def blocks(self, lo: int, hi: int) -> "StackSolution":
        """The solution of blocks lo..hi (one layer of a batch)."""
        return StackSolution(self.x[lo:hi], self.u[lo:hi], self.v[lo:hi],
                             [y[lo:hi] for y in self.ys], [z[lo:hi] for z in self.zs],
                             self.scales[:, lo:hi], [r[lo:hi] for r in self.residuals],
                             self.steps, self.flip_rounds)


def solve_stacks(x, u, v, cfg: BQQConfig, gen: torch.Generator, callback=None,
                 after_stack=None) -> StackSolution:
    """cfg.bits greedy stacks on blocks x (each fits the residual of the ones before), then,
    if cfg.joint_refine, one least-squares re-solve of all stacks' scales together.
    callback(n): n annealing steps done; after_stack(residual): a stack is finished."""
    m = mask(u, v)
    residual = x.clone()
    sol = StackSolution(x, u, v, [], [], x.new_zeros(0), [])
    stack_scales = []
    for _ in range(cfg.bits):
        y, z, s, stats = _solve_stack(residual, u, v, cfg, gen, callback)
        residual = residual - _reconstruct(y, z, s) * m
        sol.ys.append(y), sol.zs.append(z), stack_scales.append(s), sol.residuals.append(residual)
        sol.steps.append(stats["steps"]), sol.flip_rounds.append(stats["flip_rounds"])
        if after_stack is not None:
            after_stack(residual)
    sol.scales = _joint_refit(x, u, v, sol.ys, sol.zs) if cfg.joint_refine else torch.stack(stack_scales)
    return sol


@dataclass
class LayerFit:
    """One layer's stored scales (fp16), its bias (the calibration may add one) and W_hat."""

    scales16: torch.Tensor  # [p, R*C, 4] float16
    bias: torch.Tensor | None
    w_hat: torch.Tensor  # [M, K] float32, from the stored fp16 scales
    bias_shift_norm: float | None = None


def fit_layer(weight: torch.Tensor, sol: StackSolution, cfg: BQQConfig, bias=None,
              inputs=None) -> LayerFit:
    """Final scales of one layer from its blocks' solution.

    Data-free: the solution's scales rounded to fp16, with the shared d refit after rounding
    when that lowers the stored error. With inputs (calibration.InputStatistics): scales
    that minimise the output error tr((W - W_hat) H (W - W_hat)^T), H = E[x x^T] damped by
    cfg.calib_damp, and, if cfg.bias_correction, the bias absorbs the mean output shift
    E[x] (W - W_hat)^T. Raises ValueError when a scale overflows fp16."""
    rows, cols = weight.shape
    g_r, g_c = sol.x.shape[1:]
    scales = sol.scales
    if inputs is not None:
        hessian = inputs.hessian(cfg.calib_damp).to(weight.device)
        scales = _calib_refit(weight, sol.ys, sol.zs, sol.u, sol.v, hessian,
                              (math.ceil(rows / g_r), math.ceil(cols / g_c)))
    scales16 = scales.half()
    if not bool(torch.isfinite(scales16).all()):
        raise ValueError(f"scales exceed the fp16 range (|w| up to {float(weight.abs().max()):.3g}); "
                         "rescale the layer before quantising")
    if inputs is None:  # a d refit would undo the output-aware fit
        refit = _refit_d_after_rounding(sol.x, sol.u, sol.v, sol.ys, sol.zs, scales16)
        if (_stored_sse(sol.x, sol.u, sol.v, sol.ys, sol.zs, refit)
                < _stored_sse(sol.x, sol.u, sol.v, sol.ys, sol.zs, scales16)):
            scales16 = refit
    w_hat = untile(sum(_reconstruct(y, z, s) for y, z, s in zip(sol.ys, sol.zs, scales16.float())),
                   rows, cols)
    fit = LayerFit(scales16, bias, w_hat)
    if inputs is not None and cfg.bias_correction:
        shift = inputs.mean.to(weight.device, torch.float32) @ (weight - w_hat).T
        fit.bias = shift if bias is None else bias.to(weight.device, torch.float32) + shift
        fit.bias_shift_norm = float(shift.norm())
    return fit
