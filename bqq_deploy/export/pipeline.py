"""The export pipeline: model -> fp32 ONNX -> candidate linears -> (calibration) -> BQQ
solver -> graph surgery -> bundle directory with report (docs/ONNX.md, docs/CLI.md)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import onnx
import torch

from ..bundle import Bundle
from ..memory import Stages
from ..errors import BQQError, InputError
from ..format import BQQWeight, save_layers
from ..quantize import distributed, quantize_weights
from ..quantize.selection import excluded, too_small
from ..report import ExportReport, LayerEntry, SkippedLayer
from ..specs import describe_profiles, read_npz, resolve_profiles, sample_inputs
from . import forms, surgery
from .external import onnx_bytes, write_onnx_files
from .loaders import TRACED_KINDS, SourceModel, onnx_input_specs
from .notices import Notices, collecting
from .onnx_export import ensure_opset, torch_to_onnx
from .options import ExportOptions
from ..tensors import TensorFiles, external_entry, nbytes
from .torch_map import dequantised, match_parameters

log = logging.getLogger(__name__)

CALIB_BATCH = 64
VALIDATION_BATCHES = 4
# With --calib and no --val-data, this share of the calibration rows (at least one, chosen by
# a permutation with a fixed seed, so the same file always gives the same split) is held out:
# the verdict is measured on rows the solver never saw.
HOLDOUT_FRACTION = 0.2
HOLDOUT_SEED = 0
# Implementation parity against the float model holding the same dequantised weights: both
# compute in fp32 from the same bits and scales, only the summation order differs (docs/ONNX.md).
PARITY_MIN_COSINE, PARITY_MAX_REL = 0.99999, 1e-4
NO_REAL_INPUTS = ("no real inputs: parity with the dequantised model only; accuracy against "
                  "the original not measured")
# (file name, surgery form, fp16 activations) of the ONNX files of a bundle.
ONNX_FILES = ((Bundle.PORTABLE_ONNX, surgery.PORTABLE, False),
              (Bundle.PORTABLE_ONNX_FP16, surgery.PORTABLE, True),
              (Bundle.TRT_ONNX, surgery.TENSORRT, False),
              (Bundle.TRT_ONNX_FP16, surgery.TENSORRT, True))


def load_rows(data, source: SourceModel, what: str = "calibration data") -> dict[str, np.ndarray]:
    """Model inputs as arrays keyed by input name, first dim = samples, each checked against
    the model's input specs and cast to its dtype. data: an .npz path (arrays keyed by input
    name, or one array for a one-input model), a dict of such arrays, or a list of feed dicts
    (batches, concatenated). Raises InputError naming the problem."""
    label = str(data) if isinstance(data, (str, Path)) else what
    if isinstance(data, (str, Path)):
        arrays = read_npz(data)
    elif isinstance(data, dict):
        arrays = {str(k): _as_array(v, label) for k, v in data.items()}
    elif isinstance(data, (list, tuple)) and data and all(isinstance(b, dict) for b in data):
        keys = list(data[0])
        if any(list(b) != keys for b in data):
            raise InputError(f"{label}: every batch must hold the same inputs")
        try:
            arrays = {k: np.concatenate([_as_array(b[k], label) for b in data]) for k in keys}
        except ValueError as exc:
            raise InputError(f"{label}: batches do not concatenate ({exc})") from None
    else:
        raise InputError(f"{label}: expected an .npz file, a dict of arrays or a list of feed "
                         f"dicts, got {type(data).__name__}")
    names = [spec.name for spec in source.inputs]
    if len(arrays) == 1 and len(names) == 1:
        arrays = {names[0]: next(iter(arrays.values()))}
    missing = [n for n in names if n not in arrays]
    if missing:
        raise InputError(f"{label}: no array for input(s) {', '.join(missing)} "
                         f"(arrays: {', '.join(arrays) or 'none'})")
    rows = {arrays[n].shape[0] if arrays[n].ndim else 0 for n in names}
    if len(rows) != 1 or 0 in rows:
        raise InputError(f"{label}: arrays must share a non-empty first (batch) dimension")
    for spec in source.inputs:
        array = arrays[spec.name]
        fixed = [(i, d) for i, d in enumerate(spec.shape) if i > 0 and isinstance(d, int) and d > 0]
        if array.ndim != len(spec.shape) or any(array.shape[i] != d for i, d in fixed):
            raise InputError(f"{label}: array {spec.name!r} has shape {list(array.shape)}, "
                             f"the model expects {list(spec.shape)}")
        kind = np.dtype(spec.dtype).kind
        if array.dtype.kind in "fc" and kind in "iub":
            raise InputError(f"{label}: array {spec.name!r} holds {array.dtype} values, the "
                             f"model expects {spec.dtype} (token ids, masks, indices)")
        if array.dtype.kind not in "fciub":
            raise InputError(f"{label}: array {spec.name!r} has dtype {array.dtype}, not a number")
        if array.dtype.kind in "fc" and not np.isfinite(array).all():
            raise InputError(f"{label}: array {spec.name!r} holds NaN or infinite values")
    return {n: arrays[n].astype(next(s.dtype for s in source.inputs if s.name == n)) for n in names}


def _as_array(value, label: str) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    try:
        return np.asarray(value)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{label}: not an array ({exc})") from None


def _batches(arrays: dict[str, np.ndarray], index=None) -> list[dict]:
    """Feed dicts of at most CALIB_BATCH rows (rows `index` of arrays, in order)."""
    if index is not None:
        arrays = {n: a[index] for n, a in arrays.items()}
    total = len(next(iter(arrays.values())))
    return [{n: a[i:i + CALIB_BATCH] for n, a in arrays.items()} for i in range(0, total, CALIB_BATCH)]


def load_calibration(path: Path, source: SourceModel) -> list[dict]:
    """An .npz of calibration inputs as feed dicts of at most CALIB_BATCH rows (load_rows)."""
    return _batches(load_rows(path, source))


@dataclass
class ExportData:
    """The inputs an export uses: calibration batches (None: data-free), validation batches of
    real inputs (None: only probes exist), and what each is, for the report."""

    calib: list[dict] | None = None
    val: list[dict] | None = None
    calib_info: dict | None = None
    val_info: dict = field(default_factory=lambda: {"source": "none", "note": NO_REAL_INPUTS})

    def shape_hints(self) -> dict[str, tuple[int, ...]]:
        """Per input, the largest size of each dim in the real data (opt of a dynamic dim)."""
        hints: dict[str, tuple[int, ...]] = {}
        for feeds in (self.val or []) + (self.calib or []):
            for name, array in feeds.items():
                old = hints.get(name, (0,) * array.ndim)
                hints[name] = tuple(max(a, b) for a, b in zip(old, array.shape))
        return hints


def prepare_data(source: SourceModel, options: ExportOptions) -> ExportData:
    """Read --calib and --val-data (or their in-memory forms). With calib and no val, hold out
    HOLDOUT_FRACTION of the calibration rows for the verdict. Tolerances need real inputs."""
    data = ExportData()
    val = options.val if options.val is not None else options.validation_inputs
    if val is not None:
        arrays = load_rows(val, source, "validation data")
        data.val = _batches(arrays)
        data.val_info = {"source": "validation data", "samples": _rows(arrays),
                         **({"file": str(val)} if isinstance(val, (str, Path)) else {})}
    if options.calib is not None:
        arrays = load_rows(options.calib, source, "calibration data")
        total = _rows(arrays)
        order = np.random.default_rng(HOLDOUT_SEED).permutation(total)
        held = max(1, int(round(HOLDOUT_FRACTION * total))) if data.val is None and total > 1 else 0
        data.calib = _batches(arrays, np.sort(order[held:]))
        label = str(options.calib) if isinstance(options.calib, (str, Path)) else "in memory"
        data.calib_info = {"file": label, "samples": total - held}
        if held:
            data.val = _batches(arrays, np.sort(order[:held]))
            data.val_info = {"source": "calibration hold-out", "file": label, "samples": held,
                             "rule": f"{held} of {total} calibration rows ({HOLDOUT_FRACTION:.0%}, "
                                     f"fixed-seed permutation {HOLDOUT_SEED}) held out of "
                                     "calibration"}
    if data.val is None and options.judges_quality:
        raise InputError("quality tolerances (--min-cosine, --max-rel, --min-top1) need real "
                         "inputs: pass --val-data FILE.npz or --calib FILE.npz with more than one row")
    return data


def _rows(arrays: dict[str, np.ndarray]) -> int:
    return int(len(next(iter(arrays.values()))))


def input_profiles(source: SourceModel, options: ExportOptions, data: ExportData) -> SourceModel:
    """source with every input's TensorRT profile range (specs.resolve_profiles): --shapes,
    else defaults with opt from the real data; a torch module's export makes the batch and
    every ranged dim dynamic; a .pt2 keeps its own dims within their Dim bounds."""
    specs = resolve_profiles(source.inputs, options.shapes, hints=data.shape_hints(),
                             dim_bounds=source.dim_bounds, traced=source.kind in TRACED_KINDS)
    return replace(source, inputs=specs)


def check_exported_inputs(fp32: onnx.ModelProto, source: SourceModel) -> None:
    """The exported graph must take the inputs the profiles describe, dynamic where they vary."""
    graph = {spec.name: spec for spec in onnx_input_specs(fp32)}
    names = [spec.name for spec in source.inputs]
    if sorted(graph) != sorted(names):
        raise InputError(f"{source.path}: the exported ONNX graph has inputs {sorted(graph)}, "
                         f"expected {sorted(names)} (an unused input is dropped by the exporter?)")
    for spec in source.inputs:
        for i, (dim, lo, hi) in enumerate(zip(graph[spec.name].shape, spec.min, spec.max)):
            if isinstance(dim, int) and lo != hi:
                raise InputError(f"input {spec.name}: dim {i} is fixed at {dim} in the exported "
                                 f"graph (the model specialises it), but its range is {lo}..{hi}; "
                                 "give a fixed size for it with --shapes")


def fp32_onnx(source: SourceModel, work: TensorFiles | None = None) -> onnx.ModelProto:
    """The source as an fp32 ONNX model at opset >= 18 with every node named. With work
    (tensors.TensorFiles) every large tensor is a file there, read only when needed; without,
    the model holds its tensors."""
    if source.onnx_model is None:
        model = torch_to_onnx(source, work)
    elif work is not None:
        model = source.onnx_model
        work.adopt(model, Path(source.path).parent)
    else:
        model = forms.copy_model(source.onnx_model)
        onnx.external_data_helper.load_external_data_for_model(model, str(Path(source.path).parent))
    model = surgery.name_nodes(forms.normalize(ensure_opset(model), work))
    if work is not None:
        work.externalize(model)
    return model


def export_bundle(source: SourceModel, out: str | Path,
                  options: ExportOptions | None = None) -> ExportReport | None:
    """Quantise source's linear layers and write the bundle directory out; returns the report.

    Under torchrun (WORLD_SIZE > 1) every rank runs this: the layers are solved by all ranks
    (quantize.distributed, through options.cache_dir, which they must share), rank 0 writes
    the bundle and returns the report, the other ranks return None once their share is done.

    The bundle (docs/ONNX.md): model.onnx (portable, ONNX Runtime), model.trt.onnx and
    model.trt.fp16.onnx (TensorRT plugin forms), layers.bqq.safetensors, report.json/md;
    with target "trt" also the engine (bqq_deploy.trt.export_trt) or its device kit. The
    report's verdict says whether the checks passed; a failed verdict does not raise here
    (the CLI turns it into exit status 1). Warnings are collected into report.warnings.
    Large tensors wait in a working directory next to out while the export runs (memory holds
    one layer's weights at a time, besides what ONNX Runtime and a torch source hold:
    docs/SCALE.md)."""
    options = options or ExportOptions()
    Bundle.check_destination(out, options.force)  # fail before minutes of solving
    if distributed.setup() and options.cache_dir is None:
        raise InputError("a torch.distributed export needs a solver cache directory shared by "
                         "every rank (--cache-dir, cache_dir=): the ranks hand their layers over "
                         "through it")
    notices = Notices()
    with collecting(notices), Bundle.workspace(out) as work:
        return _export(source, out, options, notices, TensorFiles(work))


def _export(source: SourceModel, out, options: ExportOptions, notices: Notices,
            work: TensorFiles) -> ExportReport | None:
    stages = Stages()
    data = prepare_data(source, options)
    source = input_profiles(source, options, data)
    if source.kind == "exported" and all(s.min == s.max for s in source.inputs):
        notices.add("the program has no dynamic dimension: the exported files accept only "
                    "this shape (export it with dynamic_shapes for a dynamic batch)",
                    subject=Path(source.path).name, source="torch.export")
    with stages("onnx export"):
        fp32 = fp32_onnx(source, work)
        check_exported_inputs(fp32, source)
        if distributed.is_writer():  # the checks in ONNX Runtime: once per job, not per rank
            outputs = check_runs_on(fp32, validation_feeds(source, data)[0][:1], _feeds_label(data), work)
            fix_declared_outputs(fp32, outputs)
            if source.kind in TRACED_KINDS:
                check_traced_dims(source, fp32, work)
        candidates, skipped, matches = _select_layers(source, fp32, options, work)
    weights = _quantise(fp32, candidates, data, options, work, stages, notices)
    if not distributed.is_writer():
        return None

    with stages("graph surgery"):
        models = _rewrite(fp32, candidates, weights, work)
    report = ExportReport(
        model=str(source.path), model_kind=source.kind, target=options.target,
        config=options.config.to_dict(), inputs=[s.to_dict() for s in source.inputs],
        files={"portable": Bundle.PORTABLE_ONNX, "tensorrt": Bundle.TRT_ONNX,
               "tensorrt_fp16": Bundle.TRT_ONNX_FP16, "layers": Bundle.LAYERS},
        layers=[_layer_entry(c, weights[c.layer], candidates) for c in _first_uses(candidates)],
        skipped=skipped,
        calibration=data.calib_info, timings_s=stages.seconds, peak_rss_mib=stages.peak_rss_mib,
        shape_ranges=("as given: " if options.shapes else "defaults (set them with --shapes or "
                      "dynamic_shapes): ") + describe_profiles(source.inputs))
    with Bundle.create(out, options.force) as bundle:
        with stages("bundle files"):
            save_layers(bundle / Bundle.LAYERS, {c.layer: weights[c.layer] for c in candidates})
            write_onnx_files(bundle.root, models, Bundle.LAYERS, Bundle.WEIGHTS, work)
            del models
            report.sizes = _sizes(bundle, fp32, _first_uses(candidates), weights)
        with stages("validation"):
            report.validation, report.latency = _validate(
                source, fp32, bundle / Bundle.PORTABLE_ONNX, candidates, weights, matches, data,
                options, work)
            report.verdict = verdict(report.validation, options)
        if options.target == "trt":
            from ..trt import export_trt

            with stages("tensorrt"):
                bundle.write_report(report)  # the engine manifest records the quantiser settings
                report.engine = export_trt(bundle.root, input_specs=source.inputs,
                                           build_on_device=options.build_on_device, log=log)
                # the bundle is built in a temporary directory but the user will find it at out
                report.engine.message = report.engine.message.replace(str(bundle.root), str(out))
        report.warnings = notices.lines()
        bundle.write_report(report)
    return report


# Calibration statistics held at once, in bytes: larger sets of layers are captured and
# solved a group at a time (a layer with K inputs keeps E[x x^T], 8 K^2 bytes: 189 MB at
# K = 4864). A constant, so that one and several processes form the same groups.
CAPTURE_BYTES = 2**30


def _quantise(fp32: onnx.ModelProto, candidates, data: ExportData, options: ExportOptions,
              work: TensorFiles, stages: Stages, notices: Notices) -> dict[str, BQQWeight]:
    """Every candidate layer solved: the linears with calibration statistics when there is
    calibration data, captured group by group (CAPTURE_BYTES), then the embedding tables
    (fit data-free: their "inputs" are token ids). Weights are read from work as solved."""
    linears = [c for c in candidates if c.op_type != "Gather"]
    tables = [c for c in candidates if c.op_type == "Gather"]
    capture, groups = None, [linears]
    if data.calib is not None and linears:
        with stages("calibration capture"):
            capture = _checked(lambda: surgery.InputCapture(fp32, linears, work, options.config.calib_guard),
                               "the calibration inputs")
        groups = _capture_groups(linears)
        if not any(surgery.ATTENTION_MASK in feeds for feeds in data.calib):
            notices.add(f"the model has no input named {surgery.ATTENTION_MASK}: every position of "
                        "the calibration inputs counts as data (padding, if any, included)",
                        source="calibration")
    weights = {}
    for config, group in [*((options.config, g) for g in groups), (options.embedding_config, tables)]:
        if not group:
            continue
        inputs = {}
        if capture is not None and config is options.config:
            with stages("calibration capture"):
                inputs = _checked(lambda: capture.statistics(group, data.calib), "the calibration inputs")
        with stages("quantisation"):
            first: dict[str, surgery.Candidate] = {}  # a shared weight's first use
            for cand in group:
                first.setdefault(cand.layer, cand)
            weights.update(quantize_weights(
                LazyWeights(first), config,
                biases={c.layer: torch.from_numpy(c.bias) for c in group if c.bias is not None},
                calib=inputs, cache_dir=options.cache_dir, progress=options.progress))
        del inputs
    return weights


def _capture_groups(linears: list) -> list[list]:
    """linears in consecutive groups whose statistics (one per distinct input tensor) take
    at most CAPTURE_BYTES, every use of a shared weight in its layer's group."""
    uses: dict[str, list] = {}
    for cand in linears:
        uses.setdefault(cand.layer, []).append(cand)
    groups, group, size, seen = [], [], 0, set()
    for layer_uses in uses.values():
        new = {c.input: 8 * c.shape[1] * (c.shape[1] + 1) for c in layer_uses if c.input not in seen}
        if group and size + sum(new.values()) > CAPTURE_BYTES:
            groups.append(group)
            group, size, seen = [], 0, set()
            new = {c.input: 8 * c.shape[1] * (c.shape[1] + 1) for c in layer_uses}
        group += layer_uses
        size += sum(new.values())
        seen |= set(new)
    return groups + ([group] if group else [])


class LazyWeights(Mapping):
    """{layer: W [M, K] torch tensor} of candidates, each read from the graph when asked for."""

    def __init__(self, candidates: dict):
        self.candidates = candidates

    def __getitem__(self, layer: str) -> torch.Tensor:
        return torch.from_numpy(self.candidates[layer].weight)

    def __iter__(self):
        return iter(self.candidates)

    def __len__(self) -> int:
        return len(self.candidates)


def _select_layers(source: SourceModel, fp32: onnx.ModelProto, options: ExportOptions,
                   work: TensorFiles | None = None):
    """The linear layers to quantise (surgery.Candidate, named after their torch parameter
    when one matches), the ones left in float with the reason, and the torch matches."""
    found, rejected = surgery.find_candidates(fp32, work)
    if options.embeddings == "bqq":
        tables, tables_rejected = surgery.find_embeddings(fp32, work)
        found, rejected = found + tables, rejected + tables_rejected
    skipped = [SkippedLayer(**entry) for entry in rejected]
    matches = match_parameters(source.module, found) if source.is_torch else {}
    owner: dict[str, str] = {}  # layer name -> the ONNX weight that has it
    for cand in found:
        if cand.node in matches:
            name = matches[cand.node].weight
            if owner.setdefault(name, cand.weight_name) == cand.weight_name:
                cand.layer = name
            else:  # a second ONNX copy of one torch tensor (no other name left for it)
                del matches[cand.node]
    reasons: dict[str, str | None] = {}  # per layer: a shared weight is in or out as a whole
    for cand in found:
        if cand.layer not in reasons:
            names = [n for c in found if c.layer == cand.layer for n in c.names]
            config = options.embedding_config if cand.op_type == "Gather" else options.config
            reasons[cand.layer] = (excluded(names, exclude=options.exclude)
                                   or too_small(*cand.shape, config))
    candidates = []
    for cand in found:
        if reasons[cand.layer]:
            skipped.append(SkippedLayer(cand.layer, cand.node, reasons[cand.layer]))
        else:
            candidates.append(cand)
    if not candidates:
        raise InputError(f"{source.path}: no linear layer with a constant weight to quantise"
                         + "".join(f"; {s.onnx_node}: {s.reason}" for s in skipped[:3]))
    log.info("quantising %d linear layers (%d left in floating point)", len(candidates), len(skipped))
    return candidates, skipped, matches


def _first_uses(candidates: list[surgery.Candidate]) -> list[surgery.Candidate]:
    """One candidate per layer (a weight shared by several nodes is one layer)."""
    return [c for c in candidates if c.use == 0]


def _rewrite(fp32: onnx.ModelProto, candidates, weights, work: TensorFiles | None = None
             ) -> dict[str, onnx.ModelProto]:
    """The bundle's ONNX files, each checked by onnx.checker (large tensors in work)."""
    models, by_form = {}, {}
    for name, form, fp16 in ONNX_FILES:
        by_form.setdefault(form, surgery.replace_with_bqq(fp32, candidates, weights, form, work))
        models[name] = surgery.to_fp16(by_form[form], work) if fp16 else by_form[form]
        try:
            forms.check(models[name], full_check=True, data=work)
        except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
            raise RuntimeError(f"{name} failed onnx.checker: {exc}") from exc
    return models


def _layer_entry(cand: surgery.Candidate, weight, candidates=()) -> LayerEntry:
    w = torch.from_numpy(cand.weight)
    mse = float((weight.dequantize() - w).pow(2).mean())
    prefix = f"{cand.layer}.bqq"
    return LayerEntry(
        layer=cand.layer, onnx_node=cand.node, onnx_op=cand.op_type, onnx_weight=cand.weight_name,
        bias_node=cand.bias_node, onnx_bias=cand.bias_name, shape=list(cand.shape),
        group=[weight.group_rows, weight.group_cols], rank=weight.rank, stacks=weight.stacks,
        bits_per_weight=weight.bits_per_weight, weight_mse=mse,
        relative_mse=mse / max(float(w.pow(2).mean()), 1e-30),
        bqq_node=cand.bqq_node,
        initializers=[f"{prefix}.{k}" for k in ("y_bits", "z_bits", "scales", "bias")],
        solver={k: v for k, v in weight.info.items() if isinstance(v, (int, float, str, bool))},
        shared_nodes=[c.node for c in candidates if c.layer == cand.layer and c.use])


def _sizes(bundle: Bundle, fp32: onnx.ModelProto, candidates, weights) -> dict:
    """Whole-file bytes (each ONNX file with the external data it reads) against the fp32
    original and its fp16 twin, the whole bundle, and the quantised layers alone."""
    graph = fp32.ByteSize() - sum(i.ByteSize() for i in fp32.graph.initializer if external_entry(i))
    tensors = [(i.data_type, nbytes(i)) for i in fp32.graph.initializer if external_entry(i)]
    floats = sum(n for kind, n in tensors if kind == onnx.TensorProto.FLOAT)
    files = {"original fp32 ONNX": graph + sum(n for _, n in tensors),
             # float32 tensors halved (the inline ones are counted by ByteSize as they are)
             "original fp16 ONNX (estimate)": graph + sum(n for _, n in tensors) - floats // 2}
    for name, _, _ in ONNX_FILES:
        files[name] = onnx_bytes(bundle / name)
    files[Bundle.LAYERS] = (bundle / Bundle.LAYERS).stat().st_size
    bqq_bytes = sum(weights[c.layer].nbytes for c in candidates)
    n_weights = sum(c.shape[0] * c.shape[1] for c in candidates)
    fp16_bytes = 2 * n_weights
    return {"files": files,
            "bundle_bytes": sum(p.stat().st_size for p in bundle.root.rglob("*") if p.is_file()),
            "quantised_layers": {"weights": n_weights, "bqq_bytes": bqq_bytes,
                                 "fp16_bytes": fp16_bytes, "ratio_vs_fp16": bqq_bytes / fp16_bytes,
                                 "bits_per_weight": 8 * bqq_bytes / n_weights}}


def _validate(source, fp32, portable_path, candidates, weights, matches, data: ExportData,
              options: ExportOptions, work: TensorFiles):
    """Parity of model.onnx in ONNX Runtime against the float model with the same dequantised
    weights (torch when every weight maps to a torch parameter of its own, else the ONNX
    graph), on the real inputs when there are any, else on probes (sample_inputs); accuracy
    against the original only on real inputs; latency of the original and BQQ ONNX files.
    One model is loaded at a time: each runs every input and is released before the next."""
    from .. import runtime
    from ..runtime.onnxruntime_backend import OnnxRuntimeBackend
    from ..runtime.torch_backend import TorchBackend

    feeds, real = validation_feeds(source, data)
    what = _feeds_label(data)

    def record(load, latency_name=None):
        backend = _checked(load, "ONNX Runtime (load)")
        runs = _checked(lambda: runtime.record(backend, feeds), what)
        if latency_name and options.bench_iters > 0:
            result = runtime.benchmark(backend, feeds[0], warmup=5, iters=options.bench_iters).to_dict()
            result.pop("samples_ms", None)
            latency[latency_name] = result
        return runs

    def onnx_file(path):
        return lambda: runtime.load(path, backend="onnxruntime", providers=["CPUExecutionProvider"])

    latency = {}
    reference = None
    if source.is_torch and all(c.node in matches for c in candidates):
        try:
            with dequantised(source.module, candidates, weights, matches) as module:
                reference = record(lambda: TorchBackend(module, label="bqq-reference", device="cpu",
                                                        input_specs=source.inputs))
            reference_kind = "PyTorch model with each quantised weight replaced by its W_hat"
        except ValueError as exc:
            log.info("torch reference unavailable (%s); using the ONNX one", exc)
    if reference is None:
        with work.session_path(surgery.with_weights(fp32, candidates, weights, work), "reference") as path:
            reference = record(onnx_file(path))
        reference_kind = "fp32 ONNX graph with each quantised weight replaced by its W_hat"
    # decoded into the working directory: ONNX Runtime maps the weights instead of copying
    # a buffer of them, which halves this check's peak on a model of several GB
    bqq = record(lambda: OnnxRuntimeBackend(portable_path, ["CPUExecutionProvider"], decode_dir=work.root),
                 Bundle.PORTABLE_ONNX)
    parity = runtime.compare(reference, bqq, runtime.Tolerances(
        min_cosine=PARITY_MIN_COSINE, max_rel=PARITY_MAX_REL, min_top1=None))
    validation = {"inputs": data.val_info | {"batches": len(feeds)},
                  "vs_bqq_reference_kind": reference_kind,
                  "vs_bqq_reference": parity.to_dict() | {"markdown": parity.to_markdown()}}
    if real or options.bench_iters > 0:
        with work.session_path(fp32, "original") as path:
            original = record(onnx_file(path), "original fp32 ONNX")
        if real:
            quality = runtime.compare(original, bqq, options.tolerances)
            validation |= {
                "vs_original_kind": "the original model exported to fp32 ONNX, in ONNX Runtime",
                "vs_original": quality.to_dict() | {"markdown": quality.to_markdown()}}
    order = ("original fp32 ONNX", Bundle.PORTABLE_ONNX)
    return validation, {name: latency[name] for name in order if name in latency}


def validation_feeds(source: SourceModel, data: ExportData) -> tuple[list[dict], bool]:
    """The feeds the checks run on, and whether they are real: the validation batches, else
    VALIDATION_BATCHES probes (sample_inputs) at each input's opt shape."""
    if data.val is not None:
        return data.val, True
    return [sample_inputs(source.inputs, seed=i) for i in range(VALIDATION_BATCHES)], False


def _feeds_label(data: ExportData) -> str:
    return {"validation data": "the validation inputs",
            "calibration hold-out": "the held-out calibration inputs"}.get(
        data.val_info["source"], "probe inputs at the profile's opt shape (set it with --shapes "
                                 "NAME:MIN/OPT/MAX, or give --val-data)")


def check_runs_on(model: onnx.ModelProto, feeds: list[dict], what: str,
                  work: TensorFiles | None = None) -> dict[str, np.ndarray]:
    """Run the fp32 model (its large tensors in work) on feeds in ONNX Runtime, so inputs it
    refuses are reported before minutes of solving; returns the outputs of the last batch by
    name."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 4  # the exception says it; ORT's own log would repeat it
    with forms.session_path(model, work) as what_to_load:
        session = _checked(lambda: ort.InferenceSession(
            what_to_load, options, providers=["CPUExecutionProvider"]), "ONNX Runtime (load)")
    names = [o.name for o in session.get_outputs()]
    outputs = {}
    for batch in feeds:
        outputs = dict(zip(names, _checked(lambda: session.run(None, batch), what)))
    return outputs


def check_traced_dims(source: SourceModel, fp32: onnx.ModelProto, work: TensorFiles | None = None) -> None:
    """A traced export is only right at other sizes if the trace recorded how each dim is
    used; one that turned a size into a constant computes something else there, silently.
    So the torch module and the fp32 graph run on probes at a second shape inside every
    range (one step from opt) and must agree (max|diff| <= 1e-4 max|torch|, fp32 both)."""
    other = [replace(spec, opt=tuple(o - 1 if o - 1 >= lo else min(o + 1, hi)
                                      for lo, o, hi in zip(spec.min, spec.opt, spec.max)))
             for spec in source.inputs]
    if all(a.opt == b.opt for a, b in zip(other, source.inputs)):
        return
    feeds = sample_inputs(other, seed=VALIDATION_BATCHES)
    graph = check_runs_on(fp32, [feeds], "probe inputs one step from the opt shape", work)
    with torch.no_grad():
        flat = source.module(*(torch.from_numpy(feeds[s.name]) for s in other))
    expected = [t for t in (flat if isinstance(flat, (tuple, list)) else [flat])
                if isinstance(t, torch.Tensor)]
    shapes = ", ".join(f"{s.name}={'x'.join(map(str, s.opt))}" for s in other)
    for name, want in zip(graph, expected):
        got, want = graph[name], want.detach().float().numpy()
        rel = (float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-30))
               if got.shape == want.shape else float("inf"))
        if not rel <= PARITY_MAX_REL:
            raise InputError(f"the exported graph is not the model at {shapes} (output {name}: "
                             f"{'shape ' + str(got.shape) + ' vs ' + str(want.shape) if got.shape != want.shape else f'max rel {rel:.3g}'}): "
                             "the trace fixed a size that the shape ranges let vary; give those "
                             "dims a fixed size with --shapes, or export a .pt2 program")


def fix_declared_outputs(model: onnx.ModelProto, outputs: dict[str, np.ndarray]) -> None:
    """Some files declare an output shape the graph does not compute (ddddocr's common.onnx:
    [1, seqlen] for a [seq, 1, classes] tensor; ONNX Runtime only warns). Shape inference
    through the BQQMatMul function sees the contradiction and the checker rejects the
    rewritten file, so such a declaration is replaced by the rank that ran, every dim named."""
    for value in model.graph.output:
        array = outputs.get(value.name)
        dims = value.type.tensor_type.shape.dim
        if array is None or not value.type.tensor_type.HasField("shape"):
            continue
        if len(dims) == array.ndim and all(not d.HasField("dim_value") or d.dim_value == n
                                           or d.dim_value <= 0 for d, n in zip(dims, array.shape)):
            continue
        declared = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in dims]
        log.warning("%s: declared shape %s does not match what the graph computes (rank %d, "
                    "e.g. %s); declared with named dims instead", value.name, declared,
                    array.ndim, list(array.shape))
        del dims[:]
        for i in range(array.ndim):
            dims.add().dim_param = f"{value.name}_dim{i}"


def _checked(run, what: str):
    """run(), with a failure of the model itself on these inputs (ONNX Runtime or torch
    refusing them: an index out of range, a wrong dtype) reported as bad input."""
    try:
        return run()
    except BQQError:
        raise
    except Exception as exc:  # onnxruntime's and torch's own error types
        text = " ".join(str(exc).split()) or type(exc).__name__
        raise InputError(f"the model does not run on {what}: {text[:400]}") from exc


def verdict(validation: dict, options: ExportOptions) -> dict:
    """PASSED when parity holds and every tolerance the user set is met on real inputs, else
    FAILED with the reasons; says what the quality part rests on."""
    parity = validation["vs_bqq_reference"]
    failures = [f"parity with the dequantised model: {f}" for f in parity["failures"]]
    quality = validation.get("vs_original")
    if quality is None:
        quality_text = NO_REAL_INPUTS
    elif not options.judges_quality:
        quality_text = ("accuracy against the original measured on real inputs, not judged "
                        "(no tolerance set: --min-cosine, --max-rel, --min-top1)")
    else:
        failures += [f"against the original: {f}" for f in quality["failures"]]
        quality_text = ("accuracy against the original within the tolerances" if quality["passed"]
                        else "accuracy against the original outside the tolerances")
    status = "FAILED" if failures else "PASSED"
    return {"status": status, "passed": not failures, "parity_passed": parity["passed"],
            "quality_judged": quality is not None and options.judges_quality,
            "inputs": validation["inputs"]["source"], "note": quality_text, "failures": failures}
