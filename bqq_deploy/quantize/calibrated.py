"""Calibrated quantisation of layers (the driver's path when calibration statistics are
given): the data-free references, the bit budget, the output-aware sweep, the final exact
refit on the output error and the guard that keeps the data-free solution of a layer when
calibration did not help it on held-out rows. docs/QUANTIZE.md describes and measures each
step."""

from __future__ import annotations

import math
import time
from dataclasses import replace
from typing import Callable

import torch

from ..config import BQQConfig
from ..errors import InputError
from ..format import BQQWeight
from .budget import allocate
from .calibration import InputStatistics
from .output_aware import BlockMetrics, sweep
from .solver import StackSolution, _joint_refit, fit_layer, tile

# The sweep holds every layer of a chunk as a float64 target: at most this many times
# config.batch_weights padded weights per chunk (and a block column of the chunk at most
# config.batch_weights, like a data-free batch).
_CHUNK_BATCHES = 16


def fewer_stacks(packed: BQQWeight, weight: torch.Tensor, stacks: int, config: BQQConfig) -> StackSolution:
    """The solution of packed with only its first `stacks` stacks, scales re-solved (joint
    refit, as solve_stacks would): greedy stacks make this the data-free solution at that
    depth. weight: the layer's [M, K] weight."""
    g_r, g_c = config.group_shape
    x, u, v = tile(weight.detach().to("cpu", torch.float32), g_r, g_c)
    p, rows, cols = packed.y_bits.shape[:3]
    ys = [packed.y()[k].reshape(rows * cols, g_r, -1) for k in range(stacks)]
    zs = [packed.z()[k].reshape(rows * cols, g_c, -1).transpose(1, 2).contiguous() for k in range(stacks)]
    scales = packed.scales.float().reshape(p, rows * cols, 4)[:stacks].clone()
    if stacks < p:
        scales = _joint_refit(x, u, v, ys, zs) if config.joint_refine else scales
    return StackSolution(x, u, v, ys, zs, scales, [])


def quantize_calibrated(weights: dict[str, torch.Tensor], config: BQQConfig, biases: dict,
                        inputs: dict[str, InputStatistics], stacks: dict[str, int],
                        references: dict[str, BQQWeight], data_free: Callable, pack: Callable,
                        cache, bar, threads: Callable) -> dict[str, BQQWeight]:
    """Quantise calibrated layers. stacks: the layers whose depth is fixed (the rest get
    config.bits, or the bit budget's choice when config.bits is an average). references:
    data-free solutions already at hand (any depth >= the layer's). data_free(depths) ->
    data-free BQQWeight per layer (the driver's batched, cached path); pack(sol, fit, shape,
    config) -> BQQWeight; cache: LayerCache or None; threads(n_weights): the CPU thread
    policy for a block batch of that size (a context manager)."""
    names = list(weights)
    lo, hi = config.stack_range
    budget = [n for n in names if n not in stacks]
    if lo != hi and budget:
        need = {n: hi for n in budget if references.get(n) is None or references[n].stacks < hi}
        references = {**references, **data_free(need)}
        chosen = allocate({n: weights[n].numel() for n in budget},
                          proxy_drops(budget, weights, inputs, references, config), config.bits, lo, hi)
        stacks = {**stacks, **chosen}
    depth = {n: stacks.get(n, hi) for n in names}
    if config.calib_guard or not config.calib_bits:
        need = {n: depth[n] for n in names if references.get(n) is None or references[n].stacks < depth[n]}
        references = {**references, **data_free(need)}
    results, keys = {}, {}
    for name in names:
        if cache is not None:
            keys[name] = cache.key(weights[name], replace(config, bits=depth[name]), biases.get(name), inputs[name])
            results[name] = cache.load(keys[name])
    todo = [n for n in names if results.get(n) is None]
    for chunk in _chunks(todo, weights, config):
        start = time.perf_counter()
        if config.calib_bits:
            solutions = _sweep_chunk(chunk, weights, inputs, depth, config, bar, threads)
        else:
            solutions = {n: fewer_stacks(references[n], weights[n], depth[n], config) for n in chunk}
        seconds = time.perf_counter() - start
        total = sum(weights[n].numel() for n in chunk)
        for name in chunk:
            cfg = replace(config, bits=depth[name])
            ref = None
            if config.calib_guard:
                ref = references[name]
                if ref.stacks != depth[name]:  # without calib_bits, the solution is this one
                    ref_sol = (fewer_stacks(ref, weights[name], depth[name], config) if config.calib_bits
                               else solutions[name])
                    ref = pack(ref_sol, _fit(name, weights[name], ref_sol, cfg, biases.get(name), None),
                               weights[name].shape, cfg)
            packed = _finish(name, weights[name], solutions[name], cfg, biases.get(name), inputs[name],
                             ref, pack)
            packed.info.update(seconds=seconds * weights[name].numel() / total, batch_layers=len(chunk),
                               cache_hit=False)
            if cache is not None:
                cache.store(keys[name], packed)
            results[name] = packed
    return {n: results[n] for n in names}


def _fit(name, weight, sol, cfg, bias, stats):
    try:
        return fit_layer(weight.detach().to(sol.x.device, torch.float32), sol, cfg, bias, stats)
    except ValueError as exc:
        raise InputError(f"{name}: {exc}") from None


def _finish(name, weight, sol, cfg: BQQConfig, bias, stats: InputStatistics, ref, pack) -> BQQWeight:
    """The calibrated layer (final exact scale refit on the output error, bias correction)
    and, with a data-free reference, the guard: whichever has the lower output error on the
    held-out calibration rows (on the fit rows when there are none) is kept."""
    w = weight.detach().to(sol.x.device, torch.float32)
    fit = _fit(name, w, sol, cfg, bias, stats)
    packed = pack(sol, fit, w.shape, cfg)
    shift = None if fit.bias is None else fit.bias - (0 if bias is None else bias.to(w.device, torch.float32))
    info = {"calibrated": True, "output_aware": cfg.calib_bits, "stacks": cfg.bits,
            "calib_output_mse": stats.output_mse(w - fit.w_hat, shift),
            "mse": float(((w - fit.w_hat) ** 2).mean()),
            "greedy_mse": [float((r ** 2).sum() / w.numel()) for r in sol.residuals],
            "steps": list(sol.steps), "flip_rounds": list(sol.flip_rounds), "device": str(w.device)}
    if fit.bias_shift_norm is not None:
        info["bias_shift_norm"] = fit.bias_shift_norm
    if ref is not None:
        judge = stats.held_out if stats.held_out is not None and stats.held_out.rows else stats
        ref_hat = ref.dequantize().to(w.device)
        mine, theirs = judge.output_mse(w - fit.w_hat, shift), judge.output_mse(w - ref_hat)
        info["kept"] = "calibrated" if mine <= theirs else "data-free"
        info["guard"] = {"rows": judge.rows, "held_out": judge is not stats,
                         "calibrated_mse": mine, "data_free_mse": theirs, "kept": info["kept"]}
        if theirs < mine:
            packed = BQQWeight(ref.out_features, ref.in_features, ref.group_rows, ref.group_cols,
                               ref.rank, ref.y_bits, ref.z_bits, ref.scales, ref.bias)
            info.update(mse=float(((w - ref_hat) ** 2).mean()),
                        calib_output_mse=stats.output_mse(w - ref_hat))
    packed.info = info
    return packed


def _chunks(names: list[str], weights: dict, config: BQQConfig):
    """Consecutive layers for one sweep: a block column of all of them at most
    config.batch_weights padded weights, all of them at most _CHUNK_BATCHES times that."""
    g_r, g_c = config.group_shape
    chunk, column, total = [], 0, 0
    for name in names:
        rows, cols = weights[name].shape
        col_w = math.ceil(rows / g_r) * g_r * g_c
        all_w = col_w * math.ceil(cols / g_c)
        if chunk and (column + col_w > config.batch_weights
                      or total + all_w > _CHUNK_BATCHES * config.batch_weights):
            yield chunk
            chunk, column, total = [], 0, 0
        chunk.append(name)
        column += col_w
        total += all_w
    if chunk:
        yield chunk


def _sweep_chunk(chunk, weights, inputs, depth, config: BQQConfig, bar, threads) -> dict[str, StackSolution]:
    device = _device(config)
    metrics, shared = [], {}
    for name in chunk:  # layers that read the same tensor share statistics and metrics
        stats = inputs[name]
        if id(stats) not in shared:
            hessian = stats.hessian(config.calib_damp).to(device)
            with threads(hessian.numel()):
                shared[id(stats)] = BlockMetrics(hessian, config.group_shape[1])
        metrics.append(shared[id(stats)])
    gen = torch.Generator(device=device).manual_seed(config.seed)
    progress = None
    if bar is not None:
        def progress(n):
            bar.update(min(n, bar.total - bar.n))
    sols = sweep([weights[n].detach().to(device, torch.float32) for n in chunk], metrics,
                 [depth[n] for n in chunk], config, gen, progress, threads)
    return dict(zip(chunk, sols))


def _device(config: BQQConfig) -> torch.device:
    if config.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(config.device)


def data_free_w_hat(reference: BQQWeight, weight: torch.Tensor, stacks: int, config: BQQConfig) -> torch.Tensor:
    """W_hat of a data-free solution cut to its first `stacks` stacks (scales refit)."""
    sol = fewer_stacks(reference, weight, stacks, config)
    return fit_layer(weight, sol, replace(config, bits=stacks), None, None).w_hat


def proxy_drops(names, weights, inputs: dict[str, InputStatistics], references, config: BQQConfig) -> dict[str, float]:
    """What one more stack buys each layer, without the model: the drop in relative output
    error (output MSE / output power on the calibration rows) from floor to ceil stacks of
    its data-free solution. quantize_model measures the model output instead."""
    lo, _ = config.stack_range
    drops = {}
    for name in names:
        w = weights[name].detach().to("cpu", torch.float32)
        stats = inputs[name]
        power = stats.output_mse(w)
        errs = []
        for p in (lo, references[name].stacks):
            errs.append(stats.output_mse(w - data_free_w_hat(references[name], w, p, config)) / max(power, 1e-30))
        drops[name] = errs[0] - errs[1]
    return drops
