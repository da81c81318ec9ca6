"""Output-aware bits (quantize/output_aware.py): the closed forms against brute force and
autograd (float64), the block-column feed-forward against the exact output error, and the
guard. Small problems, well under a second each."""

from __future__ import annotations

import math

import pytest
import torch

from bqq_deploy import BQQConfig, quantize_weight
from bqq_deploy.quantize import InputStatistics
from bqq_deploy.quantize.output_aware import (BlockMetrics, metric_flips, metric_scale_system,
                                              metric_scales, metric_sse, sweep)
from bqq_deploy.quantize.solver import _reconstruct, solve_stacks, tile, untile

D = torch.float64

pytestmark = pytest.mark.usefixtures("one_solver_thread")


def _problem(seed: int, batch=3, g_r=8, g_c=6, rank=4):
    """Blocks with one padded row and one padded feature: x, u, S (PSD, zero on the padded
    feature), binary y, z (zero on padding)."""
    gen = torch.Generator().manual_seed(seed)
    u = torch.ones(batch, g_r, dtype=D)
    u[:, -1] = 0
    v = torch.ones(g_c, dtype=D)
    v[-1] = 0
    x = torch.randn(batch, g_r, g_c, generator=gen, dtype=D) * u[:, :, None] * v
    a = torch.randn(batch, g_c, g_c, generator=gen, dtype=D)
    S = (a @ a.transpose(1, 2) + 0.1 * torch.eye(g_c, dtype=D)) * v[:, None] * v[None, :]
    y = (torch.rand(batch, g_r, rank, generator=gen) > 0.5).to(D) * u[:, :, None]
    z = (torch.rand(batch, rank, g_c, generator=gen) > 0.5).to(D) * v
    return x, u, S, y, z


def _features(u, y, z):
    """The four feature images of a stack, [B, 4, g_r, g_c]: Y Z, (Y 1) 1^T, u (1^T Z), u 1^T."""
    ones = torch.ones_like(z[:, :1, :])
    return torch.stack([y @ z, y.sum(-1, keepdim=True) * ones, u[:, :, None] * z.sum(-2, keepdim=True),
                        u[:, :, None] * ones], 1)


def test_scale_system_closed_form_matches_the_explicit_features():
    x, u, S, y, z = _problem(0)
    gram, rhs = metric_scale_system(x, u, S, y, z)
    f = _features(u, y, z)
    fs = f @ S[:, None]
    # float64 sums of O(100) terms: agreement to round-off.
    assert torch.allclose(gram, torch.einsum("bmrc,bnrc->bmn", fs, f), rtol=1e-12, atol=1e-10)
    assert torch.allclose(rhs, torch.einsum("bmrc,brc->bm", fs, x), rtol=1e-12, atol=1e-10)


def test_scale_system_is_the_gradient_of_the_metric_error_and_its_solution_the_minimum():
    x, u, S, y, z = _problem(1)
    gram, rhs = metric_scale_system(x, u, S, y, z)
    s = torch.randn(3, 4, dtype=D, generator=torch.Generator().manual_seed(2)).requires_grad_(True)
    metric_sse(x, u, S, y, z, s).sum().backward()
    # d/ds of s^T G s - 2 r^T s + const is 2 (G s - r): the energy is exactly that quadratic.
    assert torch.allclose(s.grad, 2 * ((gram @ s.detach()[..., None])[..., 0] - rhs), rtol=1e-10, atol=1e-10)
    best = metric_scales(x, u, S, y, z).requires_grad_(True)
    err = metric_sse(x, u, S, y, z, best)
    err.sum().backward()
    scale = float(((x @ S) * x).sum())
    assert float(best.grad.abs().max()) < 1e-9 * scale  # stationary: the least-squares optimum
    for _ in range(20):  # and no perturbation does better
        other = best.detach() + 1e-3 * torch.randn(3, 4, dtype=D)
        assert (metric_sse(x, u, S, y, z, other) >= err.detach() - 1e-12 * scale).all()


def test_flips_never_raise_the_metric_error_and_end_where_no_single_flip_helps():
    x, u, S, y, z = _problem(3, batch=4, g_r=8, g_c=6, rank=4)
    s0 = metric_scales(x, u, S, y, z)
    before = metric_sse(x, u, S, y, z, s0)
    y1, z1, s1, rounds = metric_flips(x, u, S, y.clone(), z.clone(), s0, rounds=200)
    after = metric_sse(x, u, S, y1, z1, s1)
    assert rounds < 200 and (after <= before + 1e-12).all() and (after < before).any()
    # Bits stay binary and padding carries none.
    assert set(y1.unique().tolist()) <= {0.0, 1.0} and not y1[u == 0].any() and not z1[..., -1].any()
    # Brute force: no single bit flip lowers the error at the final scales (beyond the
    # solver's 1e-7 relative tolerance).
    tol = 1e-7 * ((x @ S) * x).sum((1, 2))
    for bits, name in ((y1, "y"), (z1, "z")):
        for idx in bits[0].nonzero(as_tuple=False).tolist() + (1 - bits[0]).nonzero(as_tuple=False).tolist():
            if name == "y" and idx[0] == u.shape[1] - 1 or name == "z" and idx[1] == z1.shape[2] - 1:
                continue  # padding
            flipped = bits.clone()
            flipped[:, idx[0], idx[1]] = 1 - flipped[:, idx[0], idx[1]]
            yy, zz = (flipped, z1) if name == "y" else (y1, flipped)
            assert (metric_sse(x, u, S, yy, zz, s1) >= after - tol).all(), (name, idx)


def _hessian(k: int, seed: int) -> torch.Tensor:
    """E[x x^T] of correlated, anisotropic inputs with a mean (like activations)."""
    gen = torch.Generator().manual_seed(seed)
    mix = torch.randn(k, k, generator=gen, dtype=D) * torch.linspace(0.1, 2.0, k, dtype=D)
    rows = torch.randn(4 * k, k, generator=gen, dtype=D) @ mix + 0.3
    return rows.T @ rows / len(rows) + 1e-3 * torch.eye(k, dtype=D)


def test_block_metric_is_the_schur_complement_and_feed_forward_makes_the_error_add_up():
    k, g_c = 40, 16  # three block columns, the last one half padding
    h = _hessian(k, 4)
    metrics = BlockMetrics(h, g_c)
    gen = torch.Generator().manual_seed(5)
    w = torch.randn(24, k, generator=gen, dtype=D)
    target = torch.nn.functional.pad(w, (0, metrics.n_cols * g_c - k))
    w_hat = torch.zeros_like(target)
    total = 0.0
    for j in range(metrics.n_cols):
        cols = slice(j * g_c, min((j + 1) * g_c, k))
        later = h[cols.stop:, cols.stop:]
        schur = h[cols, cols] - h[cols, cols.stop:] @ torch.linalg.solve(later, h[cols.stop:, cols]) \
            if cols.stop < k else h[cols, cols]
        n = cols.stop - cols.start
        metric = metrics.metric(j)
        assert torch.allclose(metric[:n, :n], schur / schur.diagonal().mean(), rtol=1e-9, atol=1e-12)
        assert not metric[n:].any() and not metric[:, n:].any()  # padded features weigh nothing
        # Any quantiser (here a coarse grid): column j's error E_j costs tr(E_j S_j E_j^T) once
        # the later columns absorb it through the feed-forward.
        blk = slice(j * g_c, (j + 1) * g_c)
        w_hat[:, blk] = torch.round(target[:, blk] * 2) / 2
        err = target[:, blk] - w_hat[:, blk]
        total += float(((err[:, :n] @ schur) * err[:, :n]).sum())
        if j + 1 < metrics.n_cols:
            target[:, (j + 1) * g_c:] -= err @ metrics.feed_forward(j)
    e = w - w_hat[:, :k]
    exact = float(((e @ h) * e).sum())
    # GPTQ's identity, exact up to the float64 Cholesky round-off.
    assert total == pytest.approx(exact, rel=1e-9)
    # And the feed-forward lowers the output error of the same grid (measured 0.85x; the
    # grid ignores S inside a block, so the gain is modest here).
    plain = w - torch.round(w * 2) / 2
    assert exact < 0.95 * float(((plain @ h) * plain).sum())


def test_sweep_solves_a_padded_layer_on_its_output_error():
    g = 16
    cfg = BQQConfig(bits=2, group_size=g, steps=60, flip_rounds=10, seed=0)
    rows, k = 40, 72  # padded in both directions
    h = _hessian(k, 6)
    w = torch.randn(rows, k, generator=torch.Generator().manual_seed(7))
    (sol,) = sweep([w], [BlockMetrics(h, g)], [2], cfg, torch.Generator().manual_seed(0))
    w_hat = untile(sum(_reconstruct(y, z, s) for y, z, s in zip(sol.ys, sol.zs, sol.scales)), rows, k)
    # Padding carries no bits.
    _, u, v = tile(w, g, g)
    for y, z in zip(sol.ys, sol.zs):
        assert not y[u == 0].any() and not z.transpose(1, 2)[v == 0].any()
    free = solve_stacks(*tile(w, g, g), cfg, torch.Generator().manual_seed(0))
    free_hat = untile(sum(_reconstruct(y, z, s) for y, z, s in zip(free.ys, free.zs, free.scales)), rows, k)

    def out_err(hat):
        e = (w - hat).double()
        return float(((e @ h) * e).sum())

    # Measured: 0.73x the data-free output error (before the driver's final exact scale
    # refit); the bound leaves room for solver noise.
    assert out_err(w_hat) < 0.85 * out_err(free_hat)
    assert math.isfinite(out_err(w_hat))


def test_guard_keeps_the_data_free_solution_when_held_out_rows_disagree():
    gen = torch.Generator().manual_seed(8)
    w = torch.randn(32, 48, generator=gen)
    cfg = BQQConfig(bits=2, group_size=16, steps=60, flip_rounds=10, calib_damp=1e-6)
    # In the fit samples features 16-47 repeat features 0-15, so the output-aware solve
    # may let errors of the copies cancel; the held-out samples (every 8th) have independent
    # features, where those errors add up (measured: 6x the data-free output error).
    x = torch.randn(512, 48, generator=gen)
    fit = torch.arange(512) % 8 != 7
    x[fit, 16:32] = x[fit, :16]
    x[fit, 32:] = x[fit, :16]
    stats = InputStatistics(48)
    stats.add(x)
    q = quantize_weight(w, cfg, calib_inputs=stats)
    free = quantize_weight(w, cfg)
    assert q.info["guard"]["kept"] == "data-free" and q.info["guard"]["held_out"]
    assert q.info["guard"]["calibrated_mse"] > q.info["guard"]["data_free_mse"]
    assert torch.equal(q.y_bits, free.y_bits) and torch.equal(q.scales, free.scales)
    # Without the guard the calibrated solution stands (and is worse on the held-out rows).
    unguarded = quantize_weight(w, BQQConfig(**{**cfg.to_dict(), "calib_guard": False}), calib_inputs=stats)
    assert "guard" not in unguarded.info and not torch.equal(unguarded.y_bits, free.y_bits)
