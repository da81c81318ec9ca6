"""The export pipeline: model -> fp32 ONNX -> candidate linears -> (calibration) -> BQQ
solver -> graph surgery -> bundle directory with report (docs/ONNX.md, docs/CLI.md)."""

from __future__ import annotations

import fnmatch
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import torch

from ..cli.common import UsageError
from ..config import BQQConfig
from ..format import save_layers
from . import surgery
from .bundle import atomic_bundle, check_destination, write_report
from .loaders import SourceModel, sample_inputs
from .onnx_export import ensure_opset, torch_to_onnx
from .torch_map import bqq_torch_model, match_parameters

log = logging.getLogger(__name__)

PORTABLE_FILE = "model.onnx"
TRT_FILE = "model.trt.onnx"
TRT_FP16_FILE = "model.trt.fp16.onnx"
LAYERS_FILE = "layers.bqq.safetensors"
TARGETS = ("onnx", "trt")
CALIB_BATCH = 64
VALIDATION_BATCHES = 4


def load_calibration(path: Path, source: SourceModel) -> list[dict]:
    """An .npz of arrays keyed by input name (or one array for a one-input model) -> feed
    dicts of at most CALIB_BATCH rows. Raises UsageError naming the problem."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path}: not a readable .npz file ({exc})") from None
    names = [spec.name for spec in source.inputs]
    if len(arrays) == 1 and len(names) == 1:
        arrays = {names[0]: next(iter(arrays.values()))}
    missing = [n for n in names if n not in arrays]
    if missing:
        raise UsageError(f"{path}: no array for input(s) {', '.join(missing)} "
                         f"(arrays: {', '.join(arrays) or 'none'})")
    rows = {arrays[n].shape[0] if arrays[n].ndim else 0 for n in names}
    if len(rows) != 1 or 0 in rows:
        raise UsageError(f"{path}: arrays must share a non-empty first (batch) dimension")
    for spec in source.inputs:
        array = arrays[spec.name]
        fixed = [(i, d) for i, d in enumerate(spec.shape) if i > 0 and isinstance(d, int) and d > 0]
        if array.ndim != len(spec.shape) or any(array.shape[i] != d for i, d in fixed):
            raise UsageError(f"{path}: array {spec.name!r} has shape {list(array.shape)}, "
                             f"the model expects {list(spec.shape)}")
        arrays[spec.name] = array.astype(spec.dtype)
    total = rows.pop()
    return [{n: arrays[n][i:i + CALIB_BATCH] for n in names} for i in range(0, total, CALIB_BATCH)]


def _excluded(cand: surgery.Candidate, patterns) -> str | None:
    for pattern in patterns:
        for name in (cand.layer, cand.weight_name, cand.node):
            if fnmatch.fnmatchcase(name, pattern):
                return pattern
    return None


def fp32_onnx(source: SourceModel) -> onnx.ModelProto:
    """The source as an fp32 ONNX model at opset >= 18 with every node named."""
    model = source.onnx_model if source.onnx_model is not None else torch_to_onnx(source)
    return surgery.name_nodes(ensure_opset(model))


def export_bundle(source: SourceModel, out: str | Path, *, config: BQQConfig,
                  target: str = "onnx", exclude=(), calib: Path | None = None,
                  force: bool = False, build_on_device: bool = False, progress: bool = True,
                  validation_inputs: list[dict] | None = None, bench_iters: int = 50,
                  allow_pickle: bool = False, cache_dir: Path | None = None) -> dict:
    """Quantise source's linear layers and write the bundle directory out; returns the report.

    target "onnx": model.onnx (portable, ONNX Runtime) + model.trt.onnx + model.trt.fp16.onnx
    (TensorRT plugin forms) + layers.bqq.safetensors + report.json/md. target "trt": the same,
    then bqq_deploy.engine.export_trt builds the engine or the on-device bundle.
    validation_inputs: feed dicts for the accuracy section (default: random samples).
    cache_dir: the solver's per-layer cache, so an interrupted export resumes."""
    if target not in TARGETS:
        raise UsageError(f"--target {target!r}: choose one of {', '.join(TARGETS)}")
    out = Path(out)
    check_destination(out, force)  # fail before minutes of solving
    timings: dict[str, float] = {}
    clock = time.perf_counter()
    fp32 = fp32_onnx(source)
    timings["onnx export"] = time.perf_counter() - clock

    candidates = []
    found, skipped = surgery.find_candidates(fp32)
    matches = match_parameters(source.module, found) if source.is_torch else {}
    for cand in found:
        if cand.node in matches:
            cand.layer = matches[cand.node].weight
        pattern = _excluded(cand, exclude)
        if pattern:
            skipped.append({"layer": cand.layer, "onnx_node": cand.node,
                            "reason": f"--exclude {pattern}"})
        else:
            candidates.append(cand)
    if not candidates:
        raise UsageError(f"{source.path}: no linear layer with a constant weight to quantise"
                         + "".join(f"; {s['onnx_node']}: {s['reason']}" for s in skipped[:3]))
    log.info("quantising %d linear layers (%d left in floating point)", len(candidates), len(skipped))

    calib_info, calib_acts = None, None
    if calib is not None:
        clock = time.perf_counter()
        feeds = load_calibration(Path(calib), source)
        calib_acts = surgery.capture_inputs(fp32, candidates, feeds)
        calib_info = {"file": str(calib), "samples": int(sum(len(next(iter(f.values()))) for f in feeds))}
        timings["calibration capture"] = time.perf_counter() - clock

    from ..quantize import quantize_weights

    clock = time.perf_counter()
    weights = quantize_weights(
        {c.layer: torch.from_numpy(c.weight) for c in candidates}, config,
        biases={c.layer: torch.from_numpy(c.bias) for c in candidates if c.bias is not None},
        calib=None if calib_acts is None else {k: torch.from_numpy(v) for k, v in calib_acts.items()},
        cache_dir=cache_dir, progress=progress)
    timings["quantisation"] = time.perf_counter() - clock

    clock = time.perf_counter()
    portable = surgery.replace_with_bqq(fp32, candidates, weights, surgery.PORTABLE)
    trt = surgery.replace_with_bqq(fp32, candidates, weights, surgery.TENSORRT)
    trt16 = surgery.to_fp16(trt)
    for name, model in ((PORTABLE_FILE, portable), (TRT_FILE, trt), (TRT_FP16_FILE, trt16)):
        try:
            onnx.checker.check_model(model, full_check=True)
        except onnx.checker.ValidationError as exc:
            raise RuntimeError(f"{name} failed onnx.checker: {exc}") from exc
    timings["graph surgery"] = time.perf_counter() - clock

    report = {
        "model": str(source.path), "model_kind": source.kind, "target": target,
        "config": config.to_dict(), "inputs": [s.to_dict() for s in source.inputs],
        "files": {"portable": PORTABLE_FILE, "tensorrt": TRT_FILE, "tensorrt_fp16": TRT_FP16_FILE,
                  "layers": LAYERS_FILE},
        "calibration": calib_info, "timings_s": timings, "skipped": skipped,
        "layers": [_layer_entry(c, weights[c.layer]) for c in candidates],
    }
    with atomic_bundle(out, force) as tmp:
        for name, model in ((PORTABLE_FILE, portable), (TRT_FILE, trt), (TRT_FP16_FILE, trt16)):
            onnx.save(model, str(tmp / name))
        save_layers(tmp / LAYERS_FILE, {c.layer: weights[c.layer] for c in candidates})
        report["sizes"] = _sizes(tmp, fp32, candidates, weights)
        clock = time.perf_counter()
        feeds = validation_inputs or [sample_inputs(source.inputs, seed=i)
                                      for i in range(VALIDATION_BATCHES)]
        report["validation"], report["latency"] = _validate(
            source, fp32, tmp / PORTABLE_FILE, candidates, weights, matches, feeds, bench_iters,
            allow_pickle)
        timings["validation"] = time.perf_counter() - clock
        if target == "trt":
            from ..engine import export_trt

            clock = time.perf_counter()
            write_report(tmp, report)  # export_trt reads the quantiser settings from it
            engine = export_trt(tmp, input_specs=[s.to_dict() for s in source.inputs],
                                build_on_device=build_on_device, log=log)
            # the bundle is built in tmp but the user will find it at out
            engine["message"] = engine["message"].replace(str(tmp), str(out))
            report["engine"] = engine
            timings["tensorrt"] = time.perf_counter() - clock
        write_report(tmp, report)
    return report


def _layer_entry(cand: surgery.Candidate, weight) -> dict:
    w = torch.from_numpy(cand.weight)
    err = weight.dequantize() - w
    mse = float(err.pow(2).mean())
    prefix = f"{cand.layer}.bqq"
    return {"layer": cand.layer, "onnx_node": cand.node, "onnx_op": cand.op_type,
            "onnx_weight": cand.weight_name, "bias_node": cand.bias_node,
            "onnx_bias": cand.bias_name, "shape": list(cand.shape),
            "group": [weight.group_rows, weight.group_cols], "rank": weight.rank,
            "stacks": weight.stacks, "bits_per_weight": weight.bits_per_weight,
            "weight_mse": mse, "relative_mse": mse / max(float(w.pow(2).mean()), 1e-30),
            "bqq_node": f"{cand.layer}.BQQMatMul",
            "initializers": [f"{prefix}.{k}" for k in ("y_bits", "z_bits", "scales", "bias")],
            "solver": {k: v for k, v in weight.info.items() if isinstance(v, (int, float, str, bool))}}


def _sizes(directory: Path, fp32: onnx.ModelProto, candidates, weights) -> dict:
    files = {"original fp32 ONNX": fp32.ByteSize(),
             "original fp16 ONNX (estimate)": surgery.to_fp16(fp32).ByteSize()}
    for name in (PORTABLE_FILE, TRT_FILE, TRT_FP16_FILE, LAYERS_FILE):
        files[name] = (directory / name).stat().st_size
    bqq_bytes = sum(weights[c.layer].nbytes for c in candidates)
    fp16_bytes = sum(2 * c.weight.size for c in candidates)
    n_weights = sum(c.weight.size for c in candidates)
    return {"files": files,
            "quantised_layers": {"weights": n_weights, "bqq_bytes": bqq_bytes,
                                 "fp16_bytes": fp16_bytes, "ratio_vs_fp16": bqq_bytes / fp16_bytes,
                                 "bits_per_weight": 8 * bqq_bytes / n_weights}}


def _validate(source, fp32, portable_path, candidates, weights, matches, feeds, bench_iters,
              allow_pickle):
    """Parity of model.onnx in ONNX Runtime against the float model with the same dequantised
    weights (torch when every weight maps to a torch parameter, else the ONNX graph), and
    against the original; latency of the original and BQQ ONNX files."""
    from .. import runtime
    from ..runtime.backends import TorchBackend

    with tempfile.TemporaryDirectory(prefix="bqq-validate-") as scratch:
        original_onnx = Path(scratch) / "original.onnx"
        onnx.save(fp32, str(original_onnx))
        bqq = runtime.load(portable_path, backend="onnxruntime", providers=["CPUExecutionProvider"])
        original = runtime.load(original_onnx, backend="onnxruntime", providers=["CPUExecutionProvider"])
        reference, reference_kind = None, None
        if source.is_torch and all(c.node in matches for c in candidates):
            try:
                module = bqq_torch_model(source.fresh_module(allow_pickle), candidates, weights, matches)
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
            for name, backend in (("original fp32 ONNX", original), (PORTABLE_FILE, bqq)):
                result = runtime.benchmark(backend, feeds[0], warmup=5, iters=bench_iters).to_dict()
                result.pop("samples_ms", None)
                latency[name] = result
    return validation, latency
