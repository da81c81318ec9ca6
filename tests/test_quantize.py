"""The BQQ solver and quantisation API: determinism, greedy stacks, padding, fp16 storage,
cache resume, calibration and whole-model replacement. Small problems, seconds each."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from bqq_deploy import BQQConfig, BQQLinear, load_layers, quantize_model, quantize_weight, quantize_weights
from bqq_deploy.quantize import driver
from bqq_deploy.quantize import solver as Q

# Short solves keep each test at a second or two; quality targets live in bench/.
FAST = BQQConfig(bits=2, group_size=16, steps=60, flip_rounds=10)


def _mse(a, b):
    return float(((a - b) ** 2).mean())


def test_deterministic_for_a_seed():
    w = torch.randn(40, 48, generator=torch.Generator().manual_seed(1))
    cfg = BQQConfig(bits=2, group_size=16, steps=40, init="random", flip_rounds=5, seed=3)
    first, second = quantize_weight(w, cfg), quantize_weight(w, cfg)
    assert torch.equal(first.y_bits, second.y_bits) and torch.equal(first.z_bits, second.z_bits)
    assert torch.equal(first.scales, second.scales)
    other = quantize_weight(w, BQQConfig(**{**cfg.to_dict(), "seed": 4}))
    assert not torch.equal(first.y_bits, other.y_bits)  # the seed does reach the solver


def test_greedy_stacks_lower_the_error_monotonically():
    w = torch.randn(32, 32, generator=torch.Generator().manual_seed(2))
    q = quantize_weight(w, BQQConfig(bits=4, group_size=16, steps=60, joint_refine=False))
    greedy = q.info["greedy_mse"]
    assert len(greedy) == 4
    # Every stack is fit by exact least squares (d alone can reproduce "add nothing"), so the
    # residual can never grow; with random data it must shrink clearly.
    assert all(later < earlier * 0.9 for earlier, later in zip(greedy, greedy[1:]))
    assert greedy[0] < _mse(w, torch.zeros_like(w))


@pytest.mark.parametrize("shape,group", [((37, 50), 16), ((5, 70), (8, 32)), ((70, 9), 16)])
def test_shapes_not_divisible_by_the_group(shape, group):
    w = torch.randn(*shape, generator=torch.Generator().manual_seed(3))
    cfg = BQQConfig(bits=2, group_size=group, steps=30, flip_rounds=5)
    q = quantize_weight(w, cfg).validate()
    g_r, g_c = cfg.group_shape
    assert q.y_bits.shape[:3] == (2, math.ceil(shape[0] / g_r), math.ceil(shape[1] / g_c))
    w_hat = q.dequantize()
    assert w_hat.shape == w.shape
    # The reported error is the error on real entries of what is stored.
    assert q.info["mse"] == pytest.approx(_mse(w, w_hat), rel=1e-5)
    # Padding does not count: the same weight embedded in a whole number of blocks, with the
    # padded region filled by huge values, would be ruined if padding leaked into the fit.
    assert q.info["mse"] < 0.5 * _mse(w, torch.zeros_like(w))


def test_masking_ignores_padded_entries():
    x = torch.randn(3, 8, 8, generator=torch.Generator().manual_seed(4))
    u, v = torch.ones(3, 8), torch.ones(3, 8)
    u[:, 5:], v[:, 6:] = 0, 0
    y = (torch.rand(3, 8, 4, generator=torch.Generator().manual_seed(5)) > 0.5).float()
    z = (torch.rand(3, 4, 8, generator=torch.Generator().manual_seed(6)) > 0.5).float()
    s = Q._solve_scales(x, u, v, y, z)
    x2 = x.clone()
    x2[:, 5:, :] = 1e3  # garbage in the padding
    x2[:, :, 6:] = -1e3
    assert torch.allclose(Q._solve_scales(x2 * Q.mask(u, v), u, v, y, z), s, atol=1e-5)
    # The scale solve is the exact least squares on the real entries.
    feats = torch.stack([y @ z, y.sum(-1, keepdim=True).expand(-1, -1, 8),
                         z.sum(-2, keepdim=True).expand(-1, 8, -1), torch.ones(3, 8, 8)], -1)
    for b in range(3):
        a = feats[b, :5, :6].reshape(-1, 4).double()
        ref = torch.linalg.lstsq(a, x[b, :5, :6].reshape(-1, 1).double()).solution.squeeze(-1)
        assert torch.allclose(s[b].double(), ref, atol=1e-4)


def _mean_field_energy(x, u, v, y, z, s):
    """Independent reference: expected masked squared error when every bit is an
    independent Bernoulli(y_ik) / Bernoulli(z_kj). Entry (i, j) is a sum over k of
    independent terms a Y Z + b Y + c Z (+ d), each with E[f^2] from Y^2 = Y, Z^2 = Z."""
    a, b, c, d = (s[:, i, None, None, None] for i in range(4))
    yk, zk = y[:, :, None, :], z.transpose(1, 2)[:, None, :, :]  # [B, g_r, 1, l], [B, 1, g_c, l]
    mean_k = a * yk * zk + b * yk + c * zk
    square_k = (a * a + 2 * a * b + 2 * a * c) * yk * zk + b * b * yk + c * c * zk + 2 * b * c * yk * zk
    mean = mean_k.sum(-1) + d[..., 0]
    var = (square_k - mean_k ** 2).sum(-1)
    return (((x - mean) ** 2 + var) * Q.mask(u, v)).sum()


def _padded_relaxed_problem(seed):
    gen = torch.Generator().manual_seed(seed)
    u, v = torch.ones(3, 12), torch.ones(3, 10)
    u[1, 9:], v[2, 7:] = 0, 0
    x = torch.randn(3, 12, 10, generator=gen, dtype=torch.float64) * Q.mask(u, v).double()
    y = torch.rand(3, 12, 5, generator=gen, dtype=torch.float64) * u[:, :, None].double()
    z = torch.rand(3, 5, 10, generator=gen, dtype=torch.float64) * v[:, None, :].double()
    return x, u.double(), v.double(), y, z


def test_relaxed_scale_solve_minimises_the_mean_field_energy():
    x, u, v, y, z = _padded_relaxed_problem(20)
    s = Q._solve_spd(*Q._scale_system(x, u, v, y, z)).requires_grad_(True)
    (grad,) = torch.autograd.grad(_mean_field_energy(x, u, v, y, z, s), s)
    # Stationary in all four scales (float64 throughout: round-off is ~1e-12 here).
    assert float(grad.abs().max()) < 1e-8


def test_annealing_step_follows_the_mean_field_gradient():
    x, u, v, y0, z0 = _padded_relaxed_problem(21)
    cfg, eta, temp = BQQConfig(scale_interval=1), 0.1, 0.05
    # Reference: the paper's first step from rest, written from the energy by autograd.
    y = ((y0 - eta * (y0 - 0.5)) * u[:, :, None]).requires_grad_(True)
    z = ((z0 - eta * (z0 - 0.5)) * v[:, None, :]).requires_grad_(True)
    s = Q._solve_spd(*Q._scale_system(x, u, v, y.detach(), z.detach()))
    gy, gz = torch.autograd.grad(_mean_field_energy(x, u, v, y, z, s), (y, z))
    y_ref = (y - eta * (gy + temp * (y - 0.5))).clamp(0, 1).detach() * u[:, :, None]
    z_ref = (z - eta * (gz + temp * (z - 0.5))).clamp(0, 1).detach() * v[:, None, :]
    y1, z1, done = Q._anneal(x, u, v, y0, z0, 1, cfg, temp, temp, eta)
    assert done == 1
    # float64: agreement to round-off proves the fused, mask-free update is the gradient step.
    assert torch.allclose(y1, y_ref, atol=1e-10) and torch.allclose(z1, z_ref, atol=1e-10)


@pytest.mark.parametrize("scale_interval", [1, 64])
def test_early_stop_ends_annealing_at_a_window_boundary(scale_interval):
    w = torch.randn(32, 32, generator=torch.Generator().manual_seed(22))
    base = dict(bits=2, group_size=16, steps=400, scale_interval=scale_interval)
    assert quantize_weight(w, BQQConfig(**base)).info["steps"] == [400, 400]
    # Any change is below a tolerance of 1 (relative to |x|^2), so the first comparison,
    # after the second 50-step window, stops; with scale_interval 64 the energy compared
    # is that of the last solve.
    stopped = quantize_weight(w, BQQConfig(early_stop_tol=1.0, **base))
    assert stopped.info["steps"] == [100, 100]
    # A tolerance nothing meets never stops: each check compares energies of fresh solves
    # (a stale solve compared with itself would read as "no change").
    strict = quantize_weight(w, BQQConfig(early_stop_tol=1e-12, **{**base, "scale_interval": 200}))
    assert strict.info["steps"] == [400, 400]


def test_annealing_trajectory_matches_the_unfused_algorithm():
    """Several steps with momentum and a falling temperature: the paper's update written
    plainly (gradient by autograd at the extrapolated point, scales solved every step)."""
    x, u, v, y0, z0 = _padded_relaxed_problem(23)
    cfg, eta, steps, t0, t1 = BQQConfig(scale_interval=1), 0.1, 6, 0.1, 0.02
    um, vm = u[:, :, None], v[:, None, :]
    y_prev, z_prev = (y0 - eta * (y0 - 0.5)) * um, (z0 - eta * (z0 - 0.5)) * vm
    y, z = y_prev.clone(), z_prev.clone()
    s = Q._solve_spd(*Q._scale_system(x, u, v, y, z))
    for step in range(steps):
        temp = t0 - step * (t0 - t1) / (steps - 1)
        yf = (y + cfg.zeta * (y - y_prev)).requires_grad_(True)
        zf = (z + cfg.zeta * (z - z_prev)).requires_grad_(True)
        gy, gz = torch.autograd.grad(_mean_field_energy(x, u, v, yf, zf, s), (yf, zf))
        y_new = (2 * y - y_prev - eta * (gy + temp * (y - 0.5))).clamp(0, 1) * um
        z_new = (2 * z - z_prev - eta * (gz + temp * (z - 0.5))).clamp(0, 1) * vm
        y_prev, z_prev, y, z = y, z, y_new, z_new
        s = Q._solve_spd(*Q._scale_system(x, u, v, y, z))
    y6, z6, done = Q._anneal(x, u, v, y0, z0, steps, cfg, t0, t1, eta)
    assert done == steps
    # float64; six steps of a momentum method amplify round-off to ~1e-12 at most here.
    assert torch.allclose(y6, y, atol=1e-9) and torch.allclose(z6, z, atol=1e-9)


def test_scales_are_stored_as_fp16_and_mse_is_of_stored_values():
    w = torch.randn(32, 40, generator=torch.Generator().manual_seed(7))
    q = quantize_weight(w, FAST, bias=torch.arange(32.0))
    assert q.scales.dtype == torch.float16 and q.bias.dtype == torch.float32
    assert torch.equal(q.bias, torch.arange(32.0))
    assert q.info["mse"] == pytest.approx(_mse(w, q.dequantize()), rel=1e-5)
    assert q.info["seconds"] > 0 and q.info["steps"] == [60, 60]


def test_svd_warm_start_beats_random_start_at_equal_steps():
    w = torch.randn(64, 64, generator=torch.Generator().manual_seed(8))
    base = dict(bits=1, group_size=64, steps=100, flip_rounds=0, joint_refine=False)
    svd = quantize_weight(w, BQQConfig(init="svd", **base)).info["mse"]
    rnd = quantize_weight(w, BQQConfig(init="random", **base)).info["mse"]
    assert svd < rnd


def test_bit_flips_never_increase_the_error():
    x = torch.randn(4, 16, 16, generator=torch.Generator().manual_seed(9))
    u, v = torch.ones(4, 16), torch.ones(4, 16)
    v[:, 12:] = 0
    x = x * Q.mask(u, v)
    y = (torch.rand(4, 16, 8, generator=torch.Generator().manual_seed(10)) > 0.5).float()
    z = (torch.rand(4, 8, 16, generator=torch.Generator().manual_seed(11)) > 0.5).float()
    s = Q._solve_scales(x, u, v, y, z)
    before = Q._block_sse(x, u, v, y, z, s)
    y2, z2, s2, rounds = Q._flip_improve(x, u, v, y.clone(), z.clone(), s, 20)
    after = Q._block_sse(x, u, v, y2, z2, s2)
    assert rounds >= 1 and bool((after <= before + 1e-5).all()) and bool((after < before).any())


def test_joint_refinement_does_not_lose_to_greedy_scales():
    w = torch.randn(32, 32, generator=torch.Generator().manual_seed(12))
    greedy = quantize_weight(w, BQQConfig(bits=3, group_size=16, steps=40, joint_refine=False))
    joint = quantize_weight(w, BQQConfig(bits=3, group_size=16, steps=40, joint_refine=True))
    assert torch.equal(greedy.y_bits, joint.y_bits)  # same bits, only the scales differ
    # Joint least squares over 3p+1 scales contains the greedy solution; fp16 rounding of
    # the scales (relative 2^-11) is the only slack.
    assert joint.info["mse"] <= greedy.info["mse"] * (1 + 1e-3)


def test_several_layers_share_a_batch_and_match_single_layer_quality():
    gen = torch.Generator().manual_seed(13)
    weights = {"a": torch.randn(16, 32, generator=gen), "b": torch.randn(24, 20, generator=gen)}
    out = quantize_weights(weights, FAST, progress=False)
    assert [out[n].info["batch_layers"] for n in weights] == [2, 2]
    for name, w in weights.items():
        assert out[name].dequantize().shape == w.shape
        assert out[name].info["mse"] < 0.5 * _mse(w, torch.zeros_like(w))


def test_cache_resume_solves_nothing_the_second_time(tmp_path, monkeypatch):
    gen = torch.Generator().manual_seed(14)
    weights = {"l1": torch.randn(16, 32, generator=gen), "l2": torch.randn(32, 16, generator=gen)}
    first = quantize_weights(weights, FAST, cache_dir=tmp_path, progress=False)
    files = sorted(tmp_path.glob("*.bqq.safetensors"))
    assert len(files) == 2 and all(load_layers(f) for f in files)
    calls = []
    real = driver._solve_batch
    monkeypatch.setattr(driver, "_solve_batch", lambda *a, **k: calls.append(a) or real(*a, **k))
    second = quantize_weights(weights, FAST, cache_dir=tmp_path, progress=False)
    assert calls == []
    for name in weights:
        assert second[name].info["cache_hit"] and not first[name].info["cache_hit"]
        assert torch.equal(second[name].y_bits, first[name].y_bits)
        assert torch.equal(second[name].scales, first[name].scales)
    # An interrupted run leaves finished layers only: remove one, only that one is solved.
    files[0].unlink()
    third = quantize_weights(weights, FAST, cache_dir=tmp_path, progress=False)
    assert len(calls) == 1 and sum(not w.info["cache_hit"] for w in third.values()) == 1
    # A different config is a different key.
    quantize_weights(weights, BQQConfig(**{**FAST.to_dict(), "bits": 1}), cache_dir=tmp_path,
                     progress=False)
    assert len(calls) == 2
    # Settings a data-free solve never reads are not part of its key.
    quantize_weights(weights, BQQConfig(**{**FAST.to_dict(), "calib_damp": 0.5, "bias_correction": False}),
                     cache_dir=tmp_path, progress=False)
    assert len(calls) == 2


@pytest.mark.parametrize("calib_bits", [False, True])
def test_calibration_lowers_output_error_on_calibration_data(calib_bits):
    gen = torch.Generator().manual_seed(15)
    w = torch.randn(32, 48, generator=gen)
    # Anisotropic activations with a mean: the case where output-aware scales matter.
    x = torch.randn(512, 48, generator=gen) * torch.linspace(0.1, 3.0, 48) + 0.5
    bias = torch.randn(32, generator=gen)
    cfg = BQQConfig(**{**FAST.to_dict(), "calib_bits": calib_bits})
    free = quantize_weight(w, cfg, bias=bias)
    calib = quantize_weight(w, cfg, bias=bias, calib_inputs=x)
    # Scales only: the data-free bits; output-aware: bits of its own.
    assert torch.equal(free.y_bits, calib.y_bits) != calib_bits
    ref = x @ w.T + bias

    def out_err(q):
        return _mse(ref, x @ q.dequantize().T + q.bias)

    assert out_err(calib) < out_err(free)
    assert calib.info["calibrated"] and not free.info["calibrated"]
    assert calib.info["guard"]["kept"] == "calibrated" and calib.info["guard"]["held_out"]


def test_calibration_refit_is_the_exact_output_least_squares():
    gen = torch.Generator().manual_seed(17)
    w = torch.randn(12, 20, generator=gen)
    x = torch.randn(64, 20, generator=gen) * torch.linspace(0.2, 2.0, 20)
    xb, u, v = Q.tile(w, 8, 8)
    ys = [(torch.rand(len(xb), 8, 4, generator=gen) > 0.5).float() * u[:, :, None] for _ in range(2)]
    zs = [(torch.rand(len(xb), 4, 8, generator=gen) > 0.5).float() * v[:, None, :] for _ in range(2)]
    # Damped as in quantize_weights: H + lam*I, i.e. output error plus lam * weight error.
    lam = 0.01 * float((x * x).sum(0).mean())
    hess = x.T @ x + lam * torch.eye(20)
    scales = Q._calib_refit(w, ys, zs, u, v, hess, (2, 3))
    w_hat = Q.untile(sum(Q._reconstruct(y, z, s) for y, z, s in zip(ys, zs, scales)), 12, 20)
    # Reference: generic least squares on vec(X W_hat^T) over every scale of the layer.
    feats = Q._features(ys, zs) * Q.mask(u, v)[:, None]  # [B, F, 8, 8]
    cols = []
    for blk in range(len(xb)):
        for f in range(feats.shape[1]):
            only = torch.zeros_like(xb)
            only[blk] = feats[blk, f]
            dense = Q.untile(only, 12, 20)
            cols.append(torch.cat([(x @ dense.T).reshape(-1), lam ** 0.5 * dense.reshape(-1)]))
    design = torch.stack(cols, 1).double()
    target = torch.cat([(x @ w.T).reshape(-1), lam ** 0.5 * w.reshape(-1)]).double()
    mine = torch.cat([torch.cat([scales[k, blk, :3] for k in range(2)] + [scales[0, blk, 3:]])
                      for blk in range(len(xb))]).double()
    # Least squares optimality: the normal-equation residual D^T (D s - t) vanishes. (A
    # generic lstsq can score lower only by exploiting float-noise directions of exactly
    # collinear features with huge, fp16-overflowing scales; see _solve_spd.)
    grad = design.T @ (design @ mine - target)
    assert float(grad.abs().max()) < 1e-4 * float((design.T @ target).abs().max())
    got = float((x @ (w - w_hat).T).double().pow(2).sum() + lam * (w - w_hat).double().pow(2).sum())
    assert got == pytest.approx(float((design @ mine - target).pow(2).sum()), rel=1e-4)


def test_bad_input_is_rejected_with_a_clear_message():
    with pytest.raises(ValueError, match="2-D"):
        quantize_weight(torch.randn(4), FAST)
    with pytest.raises(ValueError, match="finite"):
        quantize_weight(torch.tensor([[1.0, float("nan")]]), FAST)
    with pytest.raises(ValueError, match="calibration"):
        quantize_weight(torch.randn(4, 8), FAST, calib_inputs=torch.randn(10, 7))
    with pytest.raises(ValueError, match="unknown preset"):
        BQQConfig.preset("ultra")


def test_presets_are_configs():
    assert BQQConfig.preset("balanced") == BQQConfig()
    assert BQQConfig.preset("fast", bits=3).bits == 3
    steps = [BQQConfig.preset(name).steps for name in ("fast", "balanced", "best")]
    assert steps == sorted(steps) and len(set(steps)) == 3


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(32, 48)
        self.attn = nn.MultiheadAttention(48, 4, batch_first=True)
        self.fc2 = nn.Linear(48, 32, bias=False)
        self.tiny = nn.Linear(2, 3)

    def forward(self, x):
        h = torch.relu(self.fc1(x))
        h = self.attn(h, h, h, need_weights=False)[0]
        return self.fc2(h) + self.tiny(x[..., :2]).sum(-1, keepdim=True)


def test_quantize_model_replaces_linears_and_skips_with_reasons():
    torch.manual_seed(16)
    net = _Net().eval()
    x = torch.randn(4, 6, 32)
    report = quantize_model(net, FAST, calib_inputs=x, progress=False)
    rows = {row["name"]: row for row in report.layers}
    assert isinstance(net.fc1, BQQLinear) and isinstance(net.fc2, BQQLinear)
    assert isinstance(net.attn.out_proj, nn.Linear) and "MultiheadAttention" in rows["attn.out_proj"]["skipped"]
    assert isinstance(net.tiny, nn.Linear) and "too small" in rows["tiny"]["skipped"]
    for name in ("fc1", "fc2"):
        row = rows[name]
        assert row["skipped"] is None and row["mse"] > 0 and row["seconds"] > 0
        assert row["bytes"] == report.weights[name].nbytes and row["fp16_bytes"] == 2 * math.prod(row["shape"])
        assert 2 <= row["bits_per_weight"] < 16
    assert report.to_dict()["replaced"] == 2 and "skipped" in report.to_markdown()
    net(x)  # still runs
    # BQQLinear computes x W_hat^T + bias: fp32 summation-order differences only
    # (relative 1e-5 of the output scale, docs/FORMAT.md section 3).
    h = torch.randn(5, 32)
    expect = h @ report.weights["fc1"].dequantize().T + report.weights["fc1"].bias
    assert torch.allclose(net.fc1(h), expect, atol=1e-5 * float(expect.abs().max()))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_quantize_model_include_exclude_patterns():
    net = _Net()
    report = quantize_model(net, FAST, include=["fc*"], exclude=["fc2"], progress=False)
    assert [row["name"] for row in report.layers] == ["fc1"]
    assert isinstance(net.fc1, BQQLinear) and isinstance(net.fc2, nn.Linear)
    with pytest.raises(TypeError, match="TorchScript"):
        quantize_model(torch.jit.script(nn.Linear(4, 4)), FAST)


def _load_baselines():
    import importlib.util
    import sys
    from pathlib import Path

    if "baselines" not in sys.modules:  # the same module name tests/test_baselines.py uses
        path = Path(__file__).resolve().parents[1] / "bench" / "baselines.py"
        spec = importlib.util.spec_from_file_location("baselines", path)
        sys.modules["baselines"] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules["baselines"])
    return sys.modules["baselines"]


@pytest.mark.parametrize("bits,target", [(2, 0.7), (3, 1.0)])
def test_default_beats_round_to_nearest_on_heavy_tailed_weights_at_fewer_bits(bits, target):
    # Student-t(4) weights (heavier tails than trained transformer layers usually have).
    # Measured on this matrix: 0.43 (2 stacks) and 0.93 (3 stacks) of RTN's MSE (0.40 / 0.82
    # on 512x1024, docs/SOLVER_TUNING.md); the asserted bounds are the project's targets. The
    # solve is deterministic on CPU. RTN pays 2.5 / 3.5 bits per weight, BQQ 2.03 / 3.05.
    torch.manual_seed(20)
    w = torch.distributions.StudentT(4.0).sample((128, 256))
    rtn = _load_baselines().rtn_quantize(w, bits, 64)
    q = quantize_weight(w, BQQConfig(bits=bits, device="cpu"))
    assert q.bits_per_weight < rtn.bits_per_weight
    assert q.info["mse"] < target * _mse(w, rtn.weight)


def test_solver_is_invariant_to_the_units_of_the_weights():
    # Blocks are normalised (RMS on the warm-start path) before annealing, so the step size
    # and temperature mean the same for any weight scale. A power-of-two factor keeps every
    # normalised value bit-identical, hence identical bits and exactly scaled scales.
    w = torch.distributions.Laplace(0.0, 1.0).sample((32, 48))
    cfg = BQQConfig(bits=2, group_size=16, steps=40, flip_rounds=5, device="cpu")
    small, big = quantize_weight(w / 1024, cfg), quantize_weight(w, cfg)
    assert torch.equal(small.y_bits, big.y_bits) and torch.equal(small.z_bits, big.z_bits)
    assert torch.allclose(small.scales.float() * 1024, big.scales.float(), rtol=2e-3, atol=0)


def test_bad_inputs_are_refused_before_solving():
    from bqq_deploy import BQQConfig, quantize_weight

    w = torch.randn(16, 16)
    config = BQQConfig.preset("fast", group_size=16)
    with pytest.raises(ValueError, match="calibration inputs contain inf or NaN"):
        quantize_weight(w, config, calib_inputs=torch.full((4, 16), float("nan")))
    with pytest.raises(ValueError, match=r"expected \[N >= 1, 16\]"):
        quantize_weight(w, config, calib_inputs=torch.empty(0, 16))
    with pytest.raises(ValueError, match="allows at most 4096"):
        BQQConfig(group_size=4096, rank_scale=3.0)
    with pytest.raises(ValueError, match="exceed the fp16 range"):
        quantize_weight(w * 1e6, config)
