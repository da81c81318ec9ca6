"""BQQLinear: a drop-in nn.Linear replacement whose forward is the factored product of
docs/FORMAT.md section 3; it never builds the dense weight."""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field, replace

import torch
from torch import nn

from . import kernels  # loads no library until a CUDA tensor asks for one
from .format import BQQWeight, unpack_bits
from .quantize import quantize_weights
from .quantize.budget import allocate
from .quantize.calibrated import data_free_w_hat
from .quantize.capture import CalibrationData, capture, input_groups, output_error, reference_outputs
from .quantize.selection import excluded, too_small

_log = logging.getLogger(__name__)

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
        if x.is_cuda and x.dtype in (torch.float16, torch.float32) and kernels.cuda_available():
            return kernels.cuda_matmul(x, self.packed)  # casts the bias to x's dtype
        return reference_matmul(x, self.packed).to(x.dtype)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"group=({self.group_rows}, {self.group_cols}), rank={self.rank}, "
                f"stacks={self.scales.shape[0]}, bias={self.bias is not None}")


# ---------------------------------------------------------------------------------------
# whole-model quantisation


@dataclass
class QuantizationReport:
    """What quantize_model did: one dict per nn.Linear it looked at (name, shape, mse,
    bits_per_weight, stacks, bytes, fp16_bytes, seconds, skipped = reason or None; with
    calibration `kept`: "calibrated" or "data-free", the guard's choice), the packed weights
    of the replaced layers, and with calibration a summary (samples, which mask, sequential,
    layers whose rows the mask did not fit, layers the batches never called)."""

    layers: list[dict] = field(default_factory=list)
    weights: dict[str, BQQWeight] = field(default_factory=dict)
    calibration: dict | None = None

    def to_dict(self) -> dict:
        done = [row for row in self.layers if row["skipped"] is None]
        mix: dict[int, int] = {}
        for row in done:
            mix[row["stacks"]] = mix.get(row["stacks"], 0) + 1
        total = sum(row["shape"][0] * row["shape"][1] for row in done)
        return {"layers": self.layers,
                "replaced": len(done), "skipped": len(self.layers) - len(done),
                "bytes": sum(row["bytes"] for row in done),
                "fp16_bytes": sum(row["fp16_bytes"] for row in done),
                "seconds": sum(row["seconds"] for row in done),
                "stacks": {str(k): mix[k] for k in sorted(mix)},
                "mean_stacks": sum(row["stacks"] * row["shape"][0] * row["shape"][1] for row in done)
                / max(total, 1),
                "calibration": self.calibration}

    def to_markdown(self) -> str:
        lines = ["| layer | shape | stacks | weight MSE | bits/weight | bytes | fp16 bytes | seconds | note |",
                 "|---|---|---|---|---|---|---|---|---|"]
        for row in self.layers:
            shape = "x".join(str(n) for n in row["shape"])
            if row["skipped"] is not None:
                lines.append(f"| {row['name']} | {shape} | | | | | {row['fp16_bytes']} | | "
                             f"skipped: {row['skipped']} |")
            else:
                note = ", ".join(([f"kept {row['kept']}"] if row.get("kept") else [])
                                 + (["cache"] if row.get("cache_hit") else []))
                lines.append(f"| {row['name']} | {shape} | {row['stacks']} | {row['mse']:.4g} | "
                             f"{row['bits_per_weight']:.3f} | {row['bytes']} | {row['fp16_bytes']} | "
                             f"{row['seconds']:.2f} | {note} |")
        total = self.to_dict()
        mix = ", ".join(f"{n} x {k} stacks" for k, n in total["stacks"].items())
        lines.append(f"\n{total['replaced']} layers replaced ({mix}; {total['mean_stacks']:.2f} stacks "
                     f"per weight), {total['skipped']} skipped; {total['bytes']} bytes vs "
                     f"{total['fp16_bytes']} fp16 bytes.")
        cal = self.calibration
        if cal is not None:
            mask = (f"padding masked by {cal['mask']}" if cal["mask"] else
                    "no token mask: every position counted")
            lines.append(f"Calibration: {cal['samples']} samples, {mask}, "
                         f"{'sequential' if cal['sequential'] else 'all layers from the float model'}"
                         + (f"; mask did not fit the rows of {', '.join(cal['unmasked_layers'])}"
                            if cal["unmasked_layers"] else "")
                         + (f"; never called (data-free): {', '.join(cal['not_called'])}"
                            if cal["not_called"] else "") + ".")
        return "\n".join(lines)


def _structural_skip(name: str, module: nn.Linear, parents: dict) -> str | None:
    """Why this nn.Linear cannot be swapped for a BQQLinear, or None."""
    parent_name, _, child = name.rpartition(".")
    parent = parents.get(parent_name)
    if isinstance(parent, nn.MultiheadAttention) and child == "out_proj":
        return "nn.MultiheadAttention reads out_proj.weight directly, not through forward()"
    if type(module) is not nn.Linear:
        return f"{type(module).__name__} is a subclass of nn.Linear with its own semantics"
    if module.weight.numel() == 0:
        return "empty weight"
    return None


def quantize_model(model: nn.Module, config, *, include: list[str] | None = None,
                   exclude: list[str] | None = None, calib_inputs=None, calib_mask=None,
                   sequential: bool = True, cache_dir=None, progress: bool = True) -> "QuantizationReport":
    """Replace the model's nn.Linear layers by BQQLinear in place.

    include / exclude: fnmatch patterns on module names (include None = every Linear).
    Layers that cannot be replaced are kept and listed with the reason (logged too).
    calib_inputs: model inputs for calibration: a tensor or a tuple of positional
    arguments or a dict of keyword arguments of one call, or a list of such calls. Each
    linear's input activations are captured with forward hooks, padded positions dropped:
    the mask is calib_mask (a tensor, or one per call) or else the argument bound to the
    model's `attention_mask` parameter; with neither, every position counts (the report
    says so). The layers are then solved on their output error (quantize.quantize_weights).
    sequential: calibrate one group of linears at a time (those reading the same tensor),
    each on inputs from the model with every earlier group already quantised (GPTQ-style;
    only one group's statistics are held at a time); False: all from the float model.
    config.bits may be an average (2.5, with calibration): each layer gets floor or ceil
    stacks, the extra stacks where they lower the model's output error most (measured with
    one layer at a time quantised data-free, on the calibration batches).
    """
    if isinstance(model, torch.jit.ScriptModule):
        raise TypeError("quantize_model needs an eager nn.Module; a TorchScript module cannot "
                        "have submodules replaced (load the eager model, e.g. "
                        "bqq_deploy.models.load_trained)")
    parents = dict(model.named_modules())
    report = QuantizationReport()
    chosen = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        if excluded([name], include, exclude or ()):
            continue
        reason = (_structural_skip(name, module, parents)
                  or too_small(module.out_features, module.in_features, config))
        row = {"name": name, "shape": [module.out_features, module.in_features], "mse": None,
               "bits_per_weight": None, "bytes": None, "fp16_bytes": 2 * module.weight.numel(),
               "seconds": None, "skipped": reason}
        report.layers.append(row)
        if reason is not None:
            _log.info("bqq: keeping %s as nn.Linear: %s", name, reason)
        else:
            chosen.append(name)
    weights = {name: parents[name].weight.detach() for name in chosen}
    biases = {name: parents[name].bias.detach() for name in chosen if parents[name].bias is not None}
    if calib_inputs is None:
        packed = quantize_weights(weights, config, biases=biases, cache_dir=cache_dir, progress=progress)
    else:
        packed = _calibrated(model, config, weights, biases, CalibrationData(model, calib_inputs, calib_mask),
                             sequential, cache_dir, progress, report)
    rows = {row["name"]: row for row in report.layers}
    for name in chosen:
        weight = packed[name]
        old = parents[name]
        parent_name, _, child = name.rpartition(".")
        new = BQQLinear(weight).to(old.weight.device)
        setattr(parents[parent_name] if parent_name else model, child, new)
        rows[name].update(mse=weight.info.get("mse"), bits_per_weight=weight.bits_per_weight,
                          bytes=weight.nbytes, seconds=weight.info.get("seconds"),
                          cache_hit=weight.info.get("cache_hit", False), stacks=weight.stacks,
                          kept=weight.info.get("guard", {}).get("kept"))
        report.weights[name] = weight
    return report


def _calibrated(model, config, weights: dict, biases: dict, data: CalibrationData, sequential: bool,
                cache_dir, progress: bool, report: "QuantizationReport") -> dict[str, BQQWeight]:
    """quantize_model with calibration: references, bit budget, capture, solve."""
    modules = dict(model.named_modules())
    groups = input_groups(model, list(weights), data)
    called = {n for g in groups for n in g}
    lo, hi = config.stack_range
    references, stacks = {}, {}
    if config.calib_guard or not config.calib_bits or lo != hi:
        # The data-free solutions of every layer in one batched solve: the guard's
        # reference, the scales-only path's bits and the budget's sensitivity all use them.
        references = quantize_weights(weights, replace(config, bits=hi), biases=biases,
                                      cache_dir=cache_dir, progress=progress)
    if lo != hi:
        stacks = _budget(model, config, weights, references, data, called)
    unmasked: list[str] = []
    if not sequential:
        stats, unmasked = capture(model, groups, data, config.calib_guard)
        packed = quantize_weights(weights, config, biases=biases, calib=stats, cache_dir=cache_dir,
                                  progress=progress, stacks=stacks, references=references)
    else:
        packed = {}
        saved = {n: (modules[n].weight.detach().clone(),
                     None if modules[n].bias is None else modules[n].bias.detach().clone()) for n in called}
        bar = _group_bar(groups, progress)
        try:
            for group in groups:
                stats, missed = capture(model, [group], data, config.calib_guard, stop=True)
                unmasked += missed
                part = quantize_weights({n: weights[n] for n in group}, config,
                                        biases={n: biases[n] for n in group if n in biases},
                                        calib=stats, cache_dir=cache_dir, progress=False,
                                        stacks={n: stacks[n] for n in group if n in stacks},
                                        references={n: references[n] for n in group if n in references})
                with torch.no_grad():  # later groups see this group quantised
                    for name, q in part.items():
                        modules[name].weight.copy_(q.dequantize())
                        if q.bias is not None and modules[name].bias is not None:
                            modules[name].bias.copy_(q.bias)
                packed.update(part)
                if bar is not None:
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()
            with torch.no_grad():  # the float weights are back until the swap to BQQLinear
                for name, (w, b) in saved.items():
                    modules[name].weight.copy_(w)
                    if b is not None:
                        modules[name].bias.copy_(b)
        rest = {n: weights[n] for n in weights if n not in called}
        if rest:  # never called by the calibration batches: data-free
            packed.update(quantize_weights(rest, config, biases={n: biases[n] for n in rest if n in biases},
                                           cache_dir=cache_dir, progress=False,
                                           stacks={n: stacks.get(n, hi) for n in rest}))
    report.calibration = {
        "samples": data.samples, "mask": data.mask_source, "sequential": sequential,
        "unmasked_layers": sorted(set(unmasked)),
        "not_called": sorted(set(weights) - called)}
    if data.mask_source is None:
        _log.warning("bqq: no token mask for the calibration inputs (no calib_mask, no "
                     "attention_mask argument): every position counts as calibration data")
    return packed


def _budget(model, config, weights, references, data: CalibrationData, called) -> dict[str, int]:
    """Stacks per layer for an average config.bits: the drop of the model's relative output
    error (first output tensor, real positions, calibration batches) from floor to ceil
    stacks, each layer alone quantised data-free; then budget.allocate."""
    lo, hi = config.stack_range
    modules = dict(model.named_modules())
    reference = reference_outputs(model, data)
    drops = {}
    for name in weights:
        if name not in called:  # the calibration batches cannot tell: no extra stack
            drops[name] = 0.0
            continue
        errors, w = [], weights[name].detach().float().cpu()
        saved = modules[name].weight.detach().clone()
        try:
            for p in (lo, hi):
                with torch.no_grad():
                    modules[name].weight.copy_(data_free_w_hat(references[name], w, p, config))
                errors.append(output_error(model, data, reference))
        finally:
            with torch.no_grad():
                modules[name].weight.copy_(saved)
        drops[name] = errors[0] - errors[1]
    return allocate({n: w.numel() for n, w in weights.items()}, drops, config.bits, lo, hi)


def _group_bar(groups, progress: bool):
    if not progress:
        return None
    from tqdm import tqdm

    return tqdm(total=len(groups), unit="group", desc="BQQ calibrated", file=sys.stderr, dynamic_ncols=True)
