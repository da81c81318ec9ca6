"""The export pipeline: model -> fp32 ONNX -> candidate linears -> (calibration) -> BQQ
solver -> graph surgery -> bundle directory with report (docs/ONNX.md, docs/CLI.md)."""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import torch

from ..bundle import Bundle
from ..errors import InputError
from ..format import save_layers
from ..quantize import InputStatistics, quantize_weights
from ..quantize.selection import excluded, too_small
from ..report import ExportReport, LayerEntry, SkippedLayer
from ..specs import sample_inputs
from .. import contract
from . import surgery
from .external import onnx_bytes, write_onnx_files
from .loaders import SourceModel
from .onnx_export import ensure_opset, torch_to_onnx
from .options import ExportOptions
from .torch_map import bqq_torch_model, match_parameters

log = logging.getLogger(__name__)

CALIB_BATCH = 64
VALIDATION_BATCHES = 4
# (file name, surgery form, fp16 activations) of the ONNX files of a bundle.
ONNX_FILES = ((Bundle.PORTABLE_ONNX, surgery.PORTABLE, False),
              (Bundle.PORTABLE_ONNX_FP16, surgery.PORTABLE, True),
              (Bundle.TRT_ONNX, surgery.TENSORRT, False),
              (Bundle.TRT_ONNX_FP16, surgery.TENSORRT, True))


def load_calibration(path: Path, source: SourceModel) -> list[dict]:
    """An .npz of arrays keyed by input name (or one array for a one-input model) -> feed
    dicts of at most CALIB_BATCH rows. Raises InputError naming the problem."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable .npz file ({exc})") from None
    names = [spec.name for spec in source.inputs]
    if len(arrays) == 1 and len(names) == 1:
        arrays = {names[0]: next(iter(arrays.values()))}
    missing = [n for n in names if n not in arrays]
    if missing:
        raise InputError(f"{path}: no array for input(s) {', '.join(missing)} "
                         f"(arrays: {', '.join(arrays) or 'none'})")
    rows = {arrays[n].shape[0] if arrays[n].ndim else 0 for n in names}
    if len(rows) != 1 or 0 in rows:
        raise InputError(f"{path}: arrays must share a non-empty first (batch) dimension")
    for spec in source.inputs:
        array = arrays[spec.name]
        fixed = [(i, d) for i, d in enumerate(spec.shape) if i > 0 and isinstance(d, int) and d > 0]
        if array.ndim != len(spec.shape) or any(array.shape[i] != d for i, d in fixed):
            raise InputError(f"{path}: array {spec.name!r} has shape {list(array.shape)}, "
                             f"the model expects {list(spec.shape)}")
        arrays[spec.name] = array.astype(spec.dtype)
    total = rows.pop()
    return [{n: arrays[n][i:i + CALIB_BATCH] for n in names} for i in range(0, total, CALIB_BATCH)]


def fp32_onnx(source: SourceModel) -> onnx.ModelProto:
    """The source as an fp32 ONNX model at opset >= 18 with every node named."""
    model = source.onnx_model if source.onnx_model is not None else torch_to_onnx(source)
    return surgery.name_nodes(ensure_opset(model))


def export_bundle(source: SourceModel, out: str | Path,
                  options: ExportOptions | None = None) -> ExportReport:
    """Quantise source's linear layers and write the bundle directory out; returns the report.

    The bundle (docs/ONNX.md): model.onnx (portable, ONNX Runtime), model.trt.onnx and
    model.trt.fp16.onnx (TensorRT plugin forms), layers.bqq.safetensors, report.json/md;
    with target "trt" also the engine (bqq_deploy.trt.export_trt) or its device kit."""
    options = options or ExportOptions()
    Bundle.check_destination(out, options.force)  # fail before minutes of solving
    timings: dict[str, float] = {}
    clock = time.perf_counter()
    fp32 = fp32_onnx(source)
    timings["onnx export"] = time.perf_counter() - clock
    candidates, skipped, matches = _select_layers(source, fp32, options)

    calib_info, inputs = None, None
    if options.calib is not None:
        clock = time.perf_counter()
        feeds = load_calibration(Path(options.calib), source)
        # Embedding tables are fit data-free: their "inputs" are token ids.
        inputs = surgery.capture_inputs(fp32, [c for c in candidates if c.op_type != "Gather"], feeds)
        calib_info = {"file": str(options.calib),
                      "samples": int(sum(len(next(iter(f.values()))) for f in feeds))}
        timings["calibration capture"] = time.perf_counter() - clock

    clock = time.perf_counter()
    weights = {}
    for config, group in ((options.config, [c for c in candidates if c.op_type != "Gather"]),
                          (options.embedding_config, [c for c in candidates if c.op_type == "Gather"])):
        weights.update(quantize_weights(
            {c.layer: torch.from_numpy(c.weight) for c in group}, config,
            biases={c.layer: torch.from_numpy(c.bias) for c in group if c.bias is not None},
            calib={c.layer: inputs[c.layer] for c in group if c.layer in (inputs or {})},
            cache_dir=options.cache_dir, progress=options.progress) if group else {})
    timings["quantisation"] = time.perf_counter() - clock

    clock = time.perf_counter()
    models = _rewrite(fp32, candidates, weights)
    timings["graph surgery"] = time.perf_counter() - clock

    report = ExportReport(
        model=str(source.path), model_kind=source.kind, target=options.target,
        config=options.config.to_dict(), inputs=[s.to_dict() for s in source.inputs],
        files={"portable": Bundle.PORTABLE_ONNX, "tensorrt": Bundle.TRT_ONNX,
               "tensorrt_fp16": Bundle.TRT_ONNX_FP16, "layers": Bundle.LAYERS},
        layers=[_layer_entry(c, weights[c.layer]) for c in candidates], skipped=skipped,
        calibration=calib_info, timings_s=timings)
    with Bundle.create(out, options.force) as bundle:
        save_layers(bundle / Bundle.LAYERS, {c.layer: weights[c.layer] for c in candidates})
        write_onnx_files(bundle.root, models, Bundle.LAYERS, Bundle.WEIGHTS)
        report.sizes = _sizes(bundle, fp32, candidates, weights)
        clock = time.perf_counter()
        feeds = options.validation_inputs or [sample_inputs(source.inputs, seed=i)
                                              for i in range(VALIDATION_BATCHES)]
        report.validation, report.latency = _validate(
            source, fp32, bundle / Bundle.PORTABLE_ONNX, candidates, weights, matches, feeds,
            options.bench_iters)
        timings["validation"] = time.perf_counter() - clock
        if options.target == "trt":
            from ..trt import export_trt

            clock = time.perf_counter()
            bundle.write_report(report)  # the engine manifest records the quantiser settings
            report.engine = export_trt(bundle.root, input_specs=source.inputs,
                                       build_on_device=options.build_on_device, log=log)
            # the bundle is built in a temporary directory but the user will find it at out
            report.engine.message = report.engine.message.replace(str(bundle.root), str(out))
            timings["tensorrt"] = time.perf_counter() - clock
        bundle.write_report(report)
    return report


def _select_layers(source: SourceModel, fp32: onnx.ModelProto, options: ExportOptions):
    """The linear layers to quantise (surgery.Candidate, named after their torch parameter
    when one matches), the ones left in float with the reason, and the torch matches."""
    found, rejected = surgery.find_candidates(fp32)
    if options.embeddings == "bqq":
        tables, tables_rejected = surgery.find_embeddings(fp32)
        found, rejected = found + tables, rejected + tables_rejected
    skipped = [SkippedLayer(**entry) for entry in rejected]
    matches = match_parameters(source.module, found) if source.is_torch else {}
    candidates = []
    for cand in found:
        if cand.node in matches:
            cand.layer = matches[cand.node].weight
        config = options.embedding_config if cand.op_type == "Gather" else options.config
        reason = (excluded([cand.layer, cand.weight_name, cand.node], exclude=options.exclude)
                  or too_small(*cand.shape, config))
        if reason:
            skipped.append(SkippedLayer(cand.layer, cand.node, reason))
        else:
            candidates.append(cand)
    if not candidates:
        raise InputError(f"{source.path}: no linear layer with a constant weight to quantise"
                         + "".join(f"; {s.onnx_node}: {s.reason}" for s in skipped[:3]))
    log.info("quantising %d linear layers (%d left in floating point)", len(candidates), len(skipped))
    return candidates, skipped, matches


def _rewrite(fp32: onnx.ModelProto, candidates, weights) -> dict[str, onnx.ModelProto]:
    """The bundle's three ONNX files, each checked by onnx.checker."""
    models, forms = {}, {}
    for name, form, fp16 in ONNX_FILES:
        forms.setdefault(form, surgery.replace_with_bqq(fp32, candidates, weights, form))
        models[name] = surgery.to_fp16(forms[form]) if fp16 else forms[form]
        try:
            onnx.checker.check_model(models[name], full_check=True)
        except onnx.checker.ValidationError as exc:
            raise RuntimeError(f"{name} failed onnx.checker: {exc}") from exc
    return models


def _layer_entry(cand: surgery.Candidate, weight) -> LayerEntry:
    w = torch.from_numpy(cand.weight)
    mse = float((weight.dequantize() - w).pow(2).mean())
    prefix = f"{cand.layer}.bqq"
    return LayerEntry(
        layer=cand.layer, onnx_node=cand.node, onnx_op=cand.op_type, onnx_weight=cand.weight_name,
        bias_node=cand.bias_node, onnx_bias=cand.bias_name, shape=list(cand.shape),
        group=[weight.group_rows, weight.group_cols], rank=weight.rank, stacks=weight.stacks,
        bits_per_weight=weight.bits_per_weight, weight_mse=mse,
        relative_mse=mse / max(float(w.pow(2).mean()), 1e-30),
        bqq_node=f"{cand.layer}.{(contract.GATHER if cand.op_type == 'Gather' else contract.MATMUL).op_type}",
        initializers=[f"{prefix}.{k}" for k in ("y_bits", "z_bits", "scales", "bias")],
        solver={k: v for k, v in weight.info.items() if isinstance(v, (int, float, str, bool))})


def _sizes(bundle: Bundle, fp32: onnx.ModelProto, candidates, weights) -> dict:
    """Whole-file bytes (each ONNX file with the external data it reads) against the fp32
    original and its fp16 twin, the whole bundle, and the quantised layers alone."""
    files = {"original fp32 ONNX": fp32.ByteSize(),
             "original fp16 ONNX (estimate)": surgery.to_fp16(fp32).ByteSize()}
    for name, _, _ in ONNX_FILES:
        files[name] = onnx_bytes(bundle / name)
    files[Bundle.LAYERS] = (bundle / Bundle.LAYERS).stat().st_size
    bqq_bytes = sum(weights[c.layer].nbytes for c in candidates)
    fp16_bytes = sum(2 * c.weight.size for c in candidates)
    n_weights = sum(c.weight.size for c in candidates)
    return {"files": files,
            "bundle_bytes": sum(p.stat().st_size for p in bundle.root.rglob("*") if p.is_file()),
            "quantised_layers": {"weights": n_weights, "bqq_bytes": bqq_bytes,
                                 "fp16_bytes": fp16_bytes, "ratio_vs_fp16": bqq_bytes / fp16_bytes,
                                 "bits_per_weight": 8 * bqq_bytes / n_weights}}


def _validate(source, fp32, portable_path, candidates, weights, matches, feeds, bench_iters):
    """Parity of model.onnx in ONNX Runtime against the float model with the same dequantised
    weights (torch when every weight maps to a torch parameter, else the ONNX graph), and
    against the original; latency of the original and BQQ ONNX files."""
    from .. import runtime
    from ..runtime.torch_backend import TorchBackend

    with tempfile.TemporaryDirectory(prefix="bqq-validate-") as scratch:
        original_onnx = Path(scratch) / "original.onnx"
        onnx.save(fp32, str(original_onnx))
        bqq = runtime.load(portable_path, backend="onnxruntime", providers=["CPUExecutionProvider"])
        original = runtime.load(original_onnx, backend="onnxruntime", providers=["CPUExecutionProvider"])
        reference, reference_kind = None, None
        if source.is_torch and all(c.node in matches for c in candidates):
            try:
                module = bqq_torch_model(source.fresh_module(), candidates, weights, matches)
                reference = TorchBackend(module, label="bqq-reference", device="cpu")
                reference_kind = "PyTorch model with each quantised weight replaced by its W_hat"
            except ValueError as exc:
                log.info("torch reference unavailable (%s); using the ONNX one", exc)
        if reference is None:
            ref_path = Path(scratch) / "reference.onnx"
            onnx.save(surgery.with_weights(fp32, candidates, weights), str(ref_path))
            reference = runtime.load(ref_path, backend="onnxruntime", providers=["CPUExecutionProvider"])
            reference_kind = "fp32 ONNX graph with each quantised weight replaced by its W_hat"
        # Parity: same weights, so only summation order differs (tolerance: docs/ONNX.md).
        parity = runtime.validate(reference, bqq, feeds, runtime.Tolerances(
            min_cosine=0.99999, max_rel=1e-4, min_top1=None))
        # Quantisation error is reported, not judged: what is acceptable depends on the model.
        quality = runtime.validate(original, bqq, feeds, runtime.Tolerances(
            min_cosine=None, max_rel=None, min_top1=None))
        validation = {"vs_bqq_reference_kind": reference_kind,
                      "vs_bqq_reference": parity.to_dict() | {"markdown": parity.to_markdown()},
                      "vs_original_kind": "the original model exported to fp32 ONNX, in ONNX Runtime",
                      "vs_original": quality.to_dict() | {"markdown": quality.to_markdown()}}
        latency = {}
        if bench_iters > 0:
            for name, backend in (("original fp32 ONNX", original), (Bundle.PORTABLE_ONNX, bqq)):
                result = runtime.benchmark(backend, feeds[0], warmup=5, iters=bench_iters).to_dict()
                result.pop("samples_ms", None)
                latency[name] = result
    return validation, latency
