"""Runs the solver on layers: input checks, batching several layers' blocks into one solve
(bounded by config.batch_weights), CPU thread policy, the resumable per-layer cache, the
progress bar, and packing the result into BQQWeight with its solver statistics. Calibrated
layers go through quantize.calibrated (output-aware sweep, guard, bit budget)."""

from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Mapping

import torch

from ..config import BQQConfig
from ..errors import InputError
from ..format import BQQWeight, pack_bits
from ..layout import MAX_STACKS, Layout
from . import distributed
from .cache import LayerCache
from .calibrated import quantize_calibrated
from .calibration import InputStatistics
from .solver import fit_layer, solve_stacks, tile, untile

# Below this many padded weights per batch, CPU solves run on one thread: the per-step
# tensors are too small to split, and on a loaded machine two threads were measured 10-30x
# slower than one (spin-waiting for a busy core).
_SINGLE_THREAD_BELOW = 1 << 20


def quantize_weight(weight: torch.Tensor, config: BQQConfig, *, bias: torch.Tensor | None = None,
                    calib_inputs: torch.Tensor | InputStatistics | None = None,
                    progress: bool = False) -> BQQWeight:
    """Quantise one weight matrix [M, K] (out x in features) to BQQ.

    With calib_inputs (this layer's input rows [N, K], or their InputStatistics) the layer
    is solved on its output error |X W^T - X W_hat^T|^2 (see quantize_weights). weight.info
    holds "mse" (weight MSE of the stored fp16 values), "seconds", "steps" (annealing steps
    run per stack) and more.
    """
    return quantize_weights({"weight": weight}, config,
                            biases=None if bias is None else {"weight": bias},
                            calib=None if calib_inputs is None else {"weight": calib_inputs},
                            progress=progress)["weight"]


def quantize_weights(weights: Mapping[str, torch.Tensor], config: BQQConfig, *,
                     biases: dict[str, torch.Tensor] | None = None,
                     calib: dict[str, torch.Tensor | InputStatistics] | None = None,
                     cache_dir: str | Path | None = None,
                     progress: bool = True,
                     stacks: dict[str, int] | None = None,
                     references: dict[str, BQQWeight] | None = None) -> dict[str, BQQWeight]:
    """Quantise many layers; blocks of several layers share one solver batch (up to
    config.batch_weights padded weights per batch).

    weights: any mapping (one that reads each weight from disk when asked keeps a large
    model's weights out of memory: a data-free layer is read twice, to check and key it and
    to solve it).
    calib: per layer, its input rows [N, K] or their InputStatistics (layers given the same
    InputStatistics object read the same input and share its metric). A calibrated layer
    is solved on its output error (config.calib_bits: output-aware bits, then the scales
    refit exactly; docs/QUANTIZE.md), its bias corrected (config.bias_correction), and with
    config.calib_guard it keeps its data-free solution instead when that has the lower
    output error on the held-out calibration rows (info["guard"]).
    cache_dir: finished layers are kept there (LayerCache), so a rerun (e.g. after an
    interruption) loads them instead of solving them again. progress: a tqdm bar on stderr.
    stacks: the stack count of some layers (overrides config.bits; with bits=2.5 the rest
    are allocated by a sensitivity drop measured on each layer's own output error).
    references: data-free solutions already solved (at least as deep as the layer), reused
    by the guard and the budget instead of solving again.
    Under torchrun (WORLD_SIZE > 1) the data-free batches are shared out among the ranks
    (quantize.distributed; cache_dir is then required and must be shared), every rank
    returns every layer, byte-identical to a one-process run; calibrated layers are solved
    by every rank (the same result on each).
    """
    biases, calib, stacks = dict(biases or {}), dict(calib or {}), dict(stacks or {})
    unknown = (set(biases) | set(calib) | set(stacks)) - set(weights)
    if unknown:
        raise InputError(f"biases/calib/stacks name layers that are not in weights: {sorted(unknown)}")
    cache = LayerCache(cache_dir) if cache_dir is not None else None
    lo, hi = config.stack_range
    # One pass over the weights (a mapping may read each one from disk when asked for it).
    inputs, shapes, keys = {}, {}, {}
    for name, w in weights.items():
        _check_layer(name, w, biases.get(name))
        shapes[name] = tuple(w.shape)
        if name in calib:
            inputs[name] = _input_statistics(name, calib[name], w.shape[1])
        if name in stacks and (isinstance(stacks[name], bool) or not isinstance(stacks[name], int)
                               or not 1 <= stacks[name] <= MAX_STACKS):
            raise InputError(f"{name}: stacks must be an integer in 1..{MAX_STACKS}, got {stacks[name]!r}")
        if cache is not None and name not in inputs and (name in stacks or lo == hi):
            keys[name] = cache.key(w, replace(config, bits=stacks.get(name, lo)), biases.get(name), None)
    free = [n for n in weights if n not in inputs]
    if lo != hi and any(n not in stacks for n in free):
        raise InputError(f"bits={config.bits} is an average over layers: it needs calibration inputs "
                         "(--calib, calib_inputs) to choose each layer's stacks")
    bar = None
    if progress and distributed.is_writer():
        from tqdm import tqdm

        bar = tqdm(total=0, unit="w", unit_scale=True, desc="BQQ", file=sys.stderr, dynamic_ncols=True)

    def data_free(depths: dict[str, int]) -> dict[str, BQQWeight]:
        return _data_free(weights, shapes, depths, config, biases, cache, keys, bar)

    try:
        results = data_free({n: stacks.get(n, lo) for n in free}) if free else {}
        if inputs:
            cal = [n for n in weights if n in inputs]
            dense = {n: weights[n] for n in cal}
            if bar is not None and config.calib_bits:
                bar.total += sum(dense[n].numel() * stacks.get(n, hi) for n in cal)
            results.update(quantize_calibrated(
                dense, config, {n: biases[n] for n in cal if n in biases},
                inputs, {n: stacks[n] for n in cal if n in stacks},
                {n: r for n, r in (references or {}).items() if n in inputs}, data_free,
                _pack, cache, bar, _threads))
    finally:
        if bar is not None:
            bar.close()
    return {name: results[name] for name in weights}


def _data_free(weights: Mapping, shapes: dict, depths: dict[str, int], config: BQQConfig, biases: dict,
               cache, keys: dict, bar) -> dict:
    """Data-free solves of the given layers at the given depths (one stack count per batch):
    cached layers loaded, the rest solved; under torchrun the batches are dealt to the ranks.
    keys: cache keys already computed (those of other layers are computed here).

    A layer of more than config.batch_weights padded weights (an embedding table, an LM head)
    is solved in pieces of whole block rows, each a layer of its own to the batching, the
    ranks and the cache (data-free, every block is a problem of its own), and joined after:
    its memory stays one batch's, and a run cut short keeps its finished pieces."""
    split = {name: spans for name in depths
             if (spans := _row_pieces(shapes[name], replace(config, bits=depths[name])))}
    keys = _with_keys(keys, split, weights, depths, config, biases, cache)
    loaded = {}
    if cache is not None:  # joined in an earlier run: no pieces to solve
        loaded = {name: hit for name in split if (hit := cache.load(keys[name])) is not None}
    split = {name: spans for name, spans in split.items() if name not in loaded}
    if not split:
        return {**_data_free_layers(weights, shapes, {n: d for n, d in depths.items() if n not in loaded},
                                    config, biases, cache, keys, bar), **loaded}
    pieces = {f"{name}[rows {lo}:{hi}]": (name, lo, hi) for name, spans in split.items() for lo, hi in spans}
    piece_depths = {}
    for name, depth in depths.items():  # each split layer's pieces in its place
        if name in split:
            piece_depths.update({piece: depth for piece, (layer, _, _) in pieces.items() if layer == name})
        elif name not in loaded:
            piece_depths[name] = depth
    results = _data_free_layers(
        _RowPieces(weights, pieces), {**shapes, **{p: (hi - lo, shapes[n][1]) for p, (n, lo, hi) in pieces.items()}},
        piece_depths, config, {**biases, **{p: biases[n][lo:hi] for p, (n, lo, hi) in pieces.items() if n in biases}},
        cache, {n: k for n, k in keys.items() if n not in split}, bar)
    for name in split:
        results[name] = _join_rows([results.pop(p) for p, (layer, _, _) in pieces.items() if layer == name])
        if cache is not None and distributed.is_writer():
            cache.store(keys[name], results[name])
    return {**results, **loaded}


def _with_keys(keys: dict, names, weights: Mapping, depths: dict[str, int], config: BQQConfig,
               biases: dict, cache) -> dict:
    """keys with the cache key of each of names that has none (unchanged without a cache)."""
    keys = dict(keys)
    if cache is not None:
        for name in names:
            if name not in keys:
                keys[name] = cache.key(weights[name], replace(config, bits=depths[name]), biases.get(name), None)
    return keys


def _row_pieces(shape: tuple[int, int], config: BQQConfig) -> list[tuple[int, int]] | None:
    """Row ranges (whole block rows, each at most config.batch_weights padded weights) of a
    layer too large for one batch; None for one that fits."""
    layout = _layout(shape, config)
    if layout.padded_weights <= config.batch_weights:
        return None
    block_row = layout.padded_weights // layout.grid[0]
    step = max(1, config.batch_weights // block_row) * layout.group_rows
    return [(lo, min(shape[0], lo + step)) for lo in range(0, shape[0], step)]


class _RowPieces(Mapping):
    """weights with the row pieces of some layers added: piece -> (layer, first row, end row)."""

    def __init__(self, weights: Mapping, pieces: dict[str, tuple[str, int, int]]):
        self._weights, self._pieces = weights, pieces

    def __getitem__(self, name: str) -> torch.Tensor:
        if name in self._pieces:
            layer, lo, hi = self._pieces[name]
            return self._weights[layer][lo:hi].clone()  # not a view: the layer may be freed
        return self._weights[name]

    def __iter__(self):
        yield from self._weights
        yield from self._pieces

    def __len__(self) -> int:
        return len(self._weights) + len(self._pieces)


def _join_rows(parts: list[BQQWeight]) -> BQQWeight:
    """One layer from its row pieces (in order), with their statistics combined."""
    first, rows = parts[0], sum(part.out_features for part in parts)
    joined = BQQWeight(rows, first.in_features, first.group_rows, first.group_cols, first.rank,
                       *(torch.cat([getattr(part, key) for part in parts], dim=1)
                         for key in ("y_bits", "z_bits", "scales")),
                       None if first.bias is None else torch.cat([part.bias for part in parts]))
    share = [part.out_features / rows for part in parts]
    joined.info = {**first.info,
                   "mse": sum(w * part.info["mse"] for w, part in zip(share, parts)),
                   "greedy_mse": [sum(w * part.info["greedy_mse"][k] for w, part in zip(share, parts))
                                  for k in range(len(first.info["greedy_mse"]))],
                   "seconds": sum(part.info["seconds"] for part in parts),
                   "cache_hit": all(part.info.get("cache_hit", False) for part in parts),
                   "pieces": len(parts)}
    return joined


def _data_free_layers(weights: Mapping, shapes: dict, depths: dict[str, int], config: BQQConfig,
                      biases: dict, cache, keys: dict, bar) -> dict:
    """_data_free for layers that each fit one batch."""
    keys = _with_keys(keys, depths, weights, depths, config, biases, cache)

    def batches(names: list[str]) -> list[list[str]]:
        return [batch for depth in sorted({depths[n] for n in names})
                for batch in _batches([n for n in names if depths[n] == depth], shapes,
                                      replace(config, bits=depth))]

    def solve(share: list[list[str]]):
        for batch in share:
            if bar is not None:
                bar.total += sum(shapes[n][0] * shapes[n][1] * depths[n] for n in batch)
                bar.refresh()
            yield _solve_batch({n: weights[n] for n in batch}, replace(config, bits=depths[batch[0]]),
                               {n: biases[n] for n in batch if n in biases}, bar)

    if distributed.setup():  # torchrun: the batches of one process, dealt to the ranks
        return distributed.solve_across_ranks(batches(list(depths)), keys, cache, solve)
    results, todo = {}, []
    for name in depths:
        results[name] = cache.load(keys[name]) if cache is not None else None
        if results[name] is None:
            todo.append(name)
    for solved in solve(batches(todo)):
        for name, packed in solved.items():
            packed.info["cache_hit"] = False
            if cache is not None:
                cache.store(keys[name], packed)
            results[name] = packed
    return results


def _check_layer(name: str, weight, bias) -> None:
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or weight.numel() == 0:
        shape = tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__
        raise InputError(f"{name}: weight must be a non-empty 2-D tensor [M, K], got {shape}")
    if not weight.is_floating_point() or not bool(torch.isfinite(weight).all()):
        raise InputError(f"{name}: weight must be floating point and finite")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise InputError(f"{name}: bias shape {tuple(bias.shape)}, expected ({weight.shape[0]},)")


def _input_statistics(name: str, calib, features: int) -> InputStatistics:
    """calib (input rows [N, K] or their statistics), checked, as InputStatistics."""
    if isinstance(calib, InputStatistics):
        stats, shape = calib, f"{calib.rows} rows of {calib.features} features"
    elif isinstance(calib, torch.Tensor) and calib.dim() == 2 and calib.shape[1] == features:
        stats, shape = InputStatistics.of(calib), str(tuple(calib.shape))
    else:
        shape = str(tuple(calib.shape)) if isinstance(calib, torch.Tensor) else type(calib).__name__
        stats = None
    if stats is None or stats.features != features or stats.rows == 0:
        raise InputError(f"{name}: calibration inputs shape {shape}, expected [N >= 1, {features}]")
    if not stats.is_finite():
        raise InputError(f"{name}: calibration inputs contain inf or NaN")
    return stats


def _layout(shape: tuple[int, int], config: BQQConfig) -> Layout:
    return Layout.for_weight(*shape, config.group_shape, config.rank, config.stacks)


def _batches(names: list[str], shapes: dict, config: BQQConfig):
    """Consecutive groups of layers with at most config.batch_weights padded weights."""
    batch, size = [], 0
    for name in names:
        padded = _layout(shapes[name], config).padded_weights
        if batch and size + padded > config.batch_weights:
            yield batch
            batch, size = [], 0
        batch.append(name)
        size += padded
    if batch:
        yield batch


def _device(config: BQQConfig) -> torch.device:
    if config.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(config.device)


@contextlib.contextmanager
def _threads(padded_weights: int):
    """The CPU thread policy for a solver batch of this many padded weights."""
    threads = torch.get_num_threads()
    if padded_weights < _SINGLE_THREAD_BELOW and threads > 1:
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(threads)
    else:
        yield


def _solve_batch(weights: dict, config: BQQConfig, biases: dict, bar=None) -> dict:
    """Quantise several layers (same group shape and stacks) data-free as one block batch."""
    padded = sum(_layout(tuple(w.shape), config).padded_weights for w in weights.values())
    if _device(config).type == "cpu":
        with _threads(padded):
            return _solve_batch_on(weights, config, biases, bar)
    return _solve_batch_on(weights, config, biases, bar)


def _solve_batch_on(weights: dict, config: BQQConfig, biases: dict, bar) -> dict:
    device = _device(config)
    gen = torch.Generator(device=device).manual_seed(config.seed)
    g_r, g_c = config.group_shape
    start = time.perf_counter()
    dense = {name: w.detach().to(device, torch.float32) for name, w in weights.items()}
    tiles, spans, offset = [], {}, 0
    for name, w in dense.items():
        tiles.append(tile(w, g_r, g_c))
        spans[name] = (offset, offset + len(tiles[-1][0]))
        offset = spans[name][1]
    x, u, v = (torch.cat(parts) for parts in zip(*tiles))
    total_weights = sum(w.numel() for w in dense.values())
    callback = after_stack = None
    if bar is not None:
        per_step = total_weights / max(config.steps, 1)
        # Never past the total: more steps than config.steps would make tqdm warn each time.
        callback = lambda n: bar.update(min(n * per_step, bar.total - bar.n))  # noqa: E731
        real = float(u.sum(-1) @ v.sum(-1))

        def after_stack(residual):
            if config.steps == 0:
                bar.update(min(total_weights, bar.total - bar.n))
            bar.set_postfix_str(f"mse={float((residual ** 2).sum()) / real:.4g}", refresh=False)
    solution = solve_stacks(x, u, v, config, gen, callback, after_stack)
    solve_seconds = time.perf_counter() - start
    out = {}
    for name, (lo, hi) in spans.items():
        w = dense[name]
        sol = solution.blocks(lo, hi)
        try:
            fit = fit_layer(w, sol, config, biases.get(name), None)
        except ValueError as exc:
            raise InputError(f"{name}: {exc}") from None
        out[name] = _pack(sol, fit, w.shape, config)
        out[name].info = {
            "mse": float(((w - fit.w_hat) ** 2).mean()),
            # Weight MSE after each greedy stack (fp32 scales, before any refit).
            "greedy_mse": [float((untile(r, *w.shape) ** 2).mean()) for r in sol.residuals],
            "steps": list(sol.steps),
            "flip_rounds": list(sol.flip_rounds),
            "seconds": solve_seconds * w.numel() / total_weights,
            "batch_layers": len(weights),
            "device": str(device),
            "calibrated": False,
        }
    return out


def _pack(sol, fit, shape: tuple[int, int], config: BQQConfig) -> BQQWeight:
    layout = Layout.for_weight(*shape, config.group_shape, config.rank, config.stacks)
    p, (rows, cols) = layout.stacks, layout.grid
    y_all = torch.stack(sol.ys).reshape(p, rows, cols, layout.group_rows, layout.rank)
    z_all = torch.stack(sol.zs).transpose(-1, -2).reshape(p, rows, cols, layout.group_cols, layout.rank)
    bias = None if fit.bias is None else fit.bias.detach().float().cpu().clone()
    return BQQWeight(layout.out_features, layout.in_features, layout.group_rows, layout.group_cols,
                     layout.rank, pack_bits(y_all.cpu()), pack_bits(z_all.cpu()),
                     fit.scales16.reshape(p, rows, cols, 4).cpu(), bias)
