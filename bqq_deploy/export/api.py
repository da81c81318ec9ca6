"""export_model: an nn.Module in memory (a `transformers` model included) to a bundle, called
like torch.onnx.export(model, args, f)."""

from __future__ import annotations

import inspect
from pathlib import Path

import torch

from ..config import BQQConfig
from ..errors import InputError
from ..report import ExportReport
from ..specs import DEFAULT_DIM_RANGE, DEFAULT_MAX_BATCH, ShapeRange, TensorSpec
from .loaders import SourceModel, _first_line
from .options import NO_TOLERANCES, ExportOptions
from .pipeline import export_bundle


def export_model(model: torch.nn.Module, args, out_dir, *, config: BQQConfig | None = None,
                 target: str = "onnx", calib=None, val=None, dynamic_shapes=None,
                 exclude=(), tolerances=None, force: bool = False, progress: bool = False,
                 bench_iters: int = 0, cache_dir=None, build_on_device: bool = False) -> ExportReport | None:
    """Quantise model's linear layers with BQQ and write the bundle directory out_dir
    (docs/ONNX.md); returns the ExportReport (report.passed: the verdict). Under torchrun
    the ranks share the solving (cache_dir required, shared); rank 0 writes the bundle and
    returns the report, the other ranks return None (docs/SCALE.md).

    args: example inputs as torch.onnx.export takes them: a tensor, a tuple of tensors
    (positional), a dict of tensors (keyword: {"input_ids": ..., "attention_mask": ...}), or
    a tuple whose last item is such a dict. Input names are the dict keys, else forward's
    parameter names. The model is traced at these shapes (torch.onnx's TorchScript-based
    exporter; its torch.export-based one when that fails, and for models of 512 MiB or more).
    The model is used in place, never copied (a large model is in memory once): the final
    check runs it with each quantised weight swapped for its W_hat, and afterwards every weight
    and its train / eval mode are as they were.

    dynamic_shapes: per input (a dict keyed by input name, or a tuple in input order), a dict
    {axis: spec}: a torch.export.Dim (its min/max bound the range), a name (str; inputs
    sharing a name share the dim), or (min, opt, max). Without it, only the batch (axis 0)
    is dynamic. Named dims get 1..max(512, size) (the batch 1..max(8, size)), opt = the
    example's size.
    calib / val: an .npz path, a dict of arrays keyed by input name (first dim = samples), or
    a list of such feed dicts; val is what the verdict is measured on (see ExportOptions).
    config: BQQConfig (default: the "balanced" preset). target "trt" also writes the device
    kit (and builds the engine where TensorRT is installed). tolerances: runtime.Tolerances
    against the original, judged on val. bench_iters: ONNX Runtime latency iterations (0: none).
    """
    modes = [(m, m.training) for m in model.modules()] if isinstance(model, torch.nn.Module) else []
    try:
        source, shapes = module_source(model, args, dynamic_shapes)
        options = ExportOptions(config=config or BQQConfig.preset("balanced"), target=target,
                                exclude=tuple(exclude), calib=calib, val=val, shapes=shapes,
                                tolerances=tolerances or NO_TOLERANCES, force=force,
                                build_on_device=build_on_device, progress=progress,
                                bench_iters=bench_iters, cache_dir=cache_dir)
        return export_bundle(source, Path(out_dir), options)
    finally:
        for module, training in modes:
            module.training = training


class FlatModule(torch.nn.Module):
    """model with every input positional and every output a flat tuple of tensors (what the
    ONNX exporters and the back ends take). Its state_dict is model's, so layer names are
    the model's own parameter names."""

    def __init__(self, model: torch.nn.Module, positional: int, keywords: list[str]):
        super().__init__()
        self.model = model
        self.positional = positional
        self.keywords = keywords

    def forward(self, *inputs):
        out = self.model(*inputs[:self.positional],
                         **dict(zip(self.keywords, inputs[self.positional:])))
        return tuple(tensor for _, tensor in flatten_outputs(out))

    def state_dict(self, *args, **kwargs):
        return self.model.state_dict(*args, **kwargs)


def flatten_outputs(out, prefix: str = "") -> list[tuple[str, torch.Tensor]]:
    """(name, tensor) of every tensor in a model's output: a tensor, a tuple / list, or a
    dict-like (a transformers ModelOutput), nested; None entries are left out."""
    if isinstance(out, torch.Tensor):
        return [(prefix or "output", out)]
    if isinstance(out, dict) or hasattr(out, "items"):
        items = [(str(k), v) for k, v in out.items()]
    elif isinstance(out, (tuple, list)):
        items = [(f"output_{i}" if not prefix else str(i), v) for i, v in enumerate(out)]
    else:
        return []
    flat = []
    for key, value in items:
        flat += flatten_outputs(value, f"{prefix}_{key}" if prefix else key)
    return flat


def module_source(model, args, dynamic_shapes=None) -> tuple[SourceModel, list[ShapeRange]]:
    """The SourceModel of an in-memory module (kind "module") and the shape ranges its
    dynamic_shapes give; InputError when args or dynamic_shapes do not fit the model."""
    if not isinstance(model, torch.nn.Module):
        raise InputError(f"export_model needs a torch.nn.Module, got {type(model).__name__}")
    positional, keywords = _split_args(args)
    names = _positional_names(model, len(positional)) + list(keywords)
    tensors = list(positional) + list(keywords.values())
    for name, tensor in zip(names, tensors):
        if not isinstance(tensor, torch.Tensor):
            raise InputError(f"export_model: input {name!r} is a {type(tensor).__name__}, not a "
                             "tensor (pass non-tensor settings through the model's config)")
    module = FlatModule(model, len(positional), list(keywords)).eval()
    with torch.no_grad():
        try:
            outputs = flatten_outputs(module.model(*positional, **keywords))
        except Exception as exc:
            raise InputError(f"export_model: the model does not run on args "
                             f"({_first_line(exc)})") from None
    if not outputs:
        raise InputError("export_model: the model returns no tensor")
    dims = _dynamic_dims(names, tensors, dynamic_shapes)
    specs, ranges, bounds = [], [], {}
    for name, tensor in zip(names, tensors):
        shape = [int(d) for d in tensor.shape]
        given = dims.get(name, {})
        symbolic = tuple(_symbol(given[i], name, i) if i in given else d for i, d in enumerate(shape))
        specs.append(TensorSpec(name, symbolic, str(tensor.dtype).removeprefix("torch.")))
        if given:
            lo, opt, hi = zip(*(_range(given[i], i, d) if i in given else (d, d, d)
                                for i, d in enumerate(shape)))
            ranges.append(ShapeRange(name, lo, opt, hi))
        for i, spec in given.items():
            if isinstance(spec, torch.export.Dim):
                bounds[symbolic[i]] = _range(spec, i, shape[i])[::2]
    source = SourceModel(Path(f"{type(model).__name__} (in memory)"), "module", specs,
                         module=module, output_names=[n for n, _ in outputs], dim_bounds=bounds)
    return source, ranges


def _split_args(args) -> tuple[tuple, dict]:
    if isinstance(args, torch.Tensor):
        return (args,), {}
    if isinstance(args, dict):
        return (), {str(k): v for k, v in args.items() if v is not None}
    if isinstance(args, (tuple, list)):
        args = tuple(args)
        if args and isinstance(args[-1], dict):
            return args[:-1], {str(k): v for k, v in args[-1].items() if v is not None}
        return args, {}
    raise InputError(f"export_model: args must be a tensor, a tuple of tensors or a dict of "
                     f"tensors, got {type(args).__name__}")


def _positional_names(model, count: int) -> list[str]:
    try:
        params = [p for p in inspect.signature(model.forward).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        params = []
    names = [p.name for p in params[:count]]
    return names + [f"input_{i}" for i in range(len(names), count)]


def _dynamic_dims(names: list[str], tensors: list, dynamic_shapes) -> dict[str, dict[int, object]]:
    """{input: {axis: spec}} from dynamic_shapes (a dict by name or a sequence in order)."""
    if dynamic_shapes is None:
        return {}
    if isinstance(dynamic_shapes, dict):
        unknown = set(dynamic_shapes) - set(names)
        if unknown:
            raise InputError(f"dynamic_shapes names unknown input(s) {sorted(unknown)} "
                             f"(inputs: {', '.join(names)})")
        per_input = dict(dynamic_shapes)
    elif isinstance(dynamic_shapes, (tuple, list)):
        if len(dynamic_shapes) != len(names):
            raise InputError(f"dynamic_shapes has {len(dynamic_shapes)} entries for "
                             f"{len(names)} inputs ({', '.join(names)})")
        per_input = dict(zip(names, dynamic_shapes))
    else:
        raise InputError("dynamic_shapes must be a dict keyed by input name or a tuple per input")
    dims = {}
    for name, tensor in zip(names, tensors):
        axes = per_input.get(name)
        if axes is None:
            continue
        if not isinstance(axes, dict) or any(not isinstance(a, int) or not -tensor.dim() <= a < tensor.dim()
                                             for a in axes):
            raise InputError(f"dynamic_shapes[{name!r}] must map axes of its {tensor.dim()}-d "
                             f"tensor to Dim / name / (min, opt, max), got {axes!r}")
        dims[name] = {a % tensor.dim(): spec for a, spec in axes.items()}
    return dims


def _symbol(spec, name: str, axis: int) -> str:
    if isinstance(spec, str):
        return spec
    if isinstance(spec, torch.export.Dim):
        return spec.__name__
    return "batch" if axis == 0 else f"{name}_dim{axis}"


def _range(spec, axis: int, size: int) -> tuple[int, int, int]:
    """(min, opt, max) of one dynamic axis whose example size is size."""
    default_max = max(DEFAULT_MAX_BATCH if axis == 0 else DEFAULT_DIM_RANGE[2], size)
    if isinstance(spec, str):
        return 1, size, default_max
    if isinstance(spec, torch.export.Dim):
        lo = max(1, int(spec.min)) if spec.min is not None else 1
        try:
            hi = int(spec.max)
        except (TypeError, ValueError, OverflowError):
            hi = default_max
        hi = default_max if hi > 2**31 else hi
        return lo, min(max(size, lo), hi), hi
    if isinstance(spec, (tuple, list)) and len(spec) == 3 and all(isinstance(v, int) for v in spec):
        lo, opt, hi = spec
        if not 1 <= lo <= opt <= hi:
            raise InputError(f"dynamic_shapes range {tuple(spec)} needs 1 <= min <= opt <= max")
        return lo, opt, hi
    raise InputError(f"dynamic_shapes axis {axis}: expected a torch.export.Dim, a name or "
                     f"(min, opt, max), got {spec!r}")
