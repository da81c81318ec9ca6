"""BQQLinear: a drop-in nn.Linear replacement whose forward is the factored product of
docs/FORMAT.md section 3; it never builds the dense weight."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from torch import nn

from . import kernels  # loads no library until a CUDA tensor asks for one
from .format import BQQWeight, unpack_bits
from .quantize import InputStatistics, quantize_weights
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
    bits_per_weight, bytes, fp16_bytes, seconds, skipped = reason or None) and the packed
    weights of the replaced layers."""

    layers: list[dict] = field(default_factory=list)
    weights: dict[str, BQQWeight] = field(default_factory=dict)

    def to_dict(self) -> dict:
        done = [row for row in self.layers if row["skipped"] is None]
        return {"layers": self.layers,
                "replaced": len(done), "skipped": len(self.layers) - len(done),
                "bytes": sum(row["bytes"] for row in done),
                "fp16_bytes": sum(row["fp16_bytes"] for row in done),
                "seconds": sum(row["seconds"] for row in done)}

    def to_markdown(self) -> str:
        lines = ["| layer | shape | weight MSE | bits/weight | bytes | fp16 bytes | seconds | note |",
                 "|---|---|---|---|---|---|---|---|"]
        for row in self.layers:
            shape = "x".join(str(n) for n in row["shape"])
            if row["skipped"] is not None:
                lines.append(f"| {row['name']} | {shape} | | | | {row['fp16_bytes']} | | "
                             f"skipped: {row['skipped']} |")
            else:
                lines.append(f"| {row['name']} | {shape} | {row['mse']:.4g} | "
                             f"{row['bits_per_weight']:.3f} | {row['bytes']} | {row['fp16_bytes']} | "
                             f"{row['seconds']:.2f} | {'cache' if row.get('cache_hit') else ''} |")
        total = self.to_dict()
        lines.append(f"\n{total['replaced']} layers replaced, {total['skipped']} skipped; "
                     f"{total['bytes']} bytes vs {total['fp16_bytes']} fp16 bytes.")
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


def _capture_inputs(model: nn.Module, names: list[str], calib_inputs) -> dict[str, InputStatistics]:
    """Statistics of each named Linear's inputs for the given model inputs (forward hooks)."""
    modules = dict(model.named_modules())
    stats = {name: InputStatistics(modules[name].in_features) for name in names}
    handles = [modules[name].register_forward_hook(
        lambda _module, args, _output, name=name: stats[name].add(args[0])) for name in names]
    inputs = calib_inputs if isinstance(calib_inputs, tuple) else (calib_inputs,)
    try:
        with torch.no_grad():
            model(*inputs)
    finally:
        for handle in handles:
            handle.remove()
    return {name: s for name, s in stats.items() if s.rows}


def quantize_model(model: nn.Module, config, *, include: list[str] | None = None,
                   exclude: list[str] | None = None, calib_inputs=None,
                   cache_dir=None, progress: bool = True) -> "QuantizationReport":
    """Replace the model's nn.Linear layers by BQQLinear in place.

    include / exclude: fnmatch patterns on module names (include None = every Linear).
    Layers that cannot be replaced are kept and listed with the reason (logged too).
    calib_inputs: model inputs (a tensor or a tuple of positional arguments); each layer's
    input activations are captured with forward hooks and used for output-aware scale
    refit and bias correction (see quantize.quantize_weights).
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
    calib = _capture_inputs(model, chosen, calib_inputs) if calib_inputs is not None else None
    weights = {name: parents[name].weight.detach() for name in chosen}
    biases = {name: parents[name].bias.detach() for name in chosen if parents[name].bias is not None}
    packed = quantize_weights(weights, config, biases=biases, calib=calib, cache_dir=cache_dir,
                              progress=progress)
    rows = {row["name"]: row for row in report.layers}
    for name in chosen:
        weight = packed[name]
        old = parents[name]
        parent_name, _, child = name.rpartition(".")
        new = BQQLinear(weight).to(old.weight.device)
        setattr(parents[parent_name] if parent_name else model, child, new)
        rows[name].update(mse=weight.info.get("mse"), bits_per_weight=weight.bits_per_weight,
                          bytes=weight.nbytes, seconds=weight.info.get("seconds"),
                          cache_hit=weight.info.get("cache_hit", False))
        report.weights[name] = weight
    return report
