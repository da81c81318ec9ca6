"""The Python fuzz targets: which bqq_deploy reader each one feeds, and which exception is
the documented answer to bad input. Anything else a reader raises, a wrong result from an
accepted input, a hang or a crash is a finding (fuzz/pyfuzz.py records it).

Accepted errors per target (bqq_deploy.errors; see fuzz/README.md):
  safetensors   load_layers                          FormatError
  npz           load_calibration (--calib),          InputError
                bqq-validate's --inputs reader
  input_shape   parse_input_shape, specs_from_shapes InputError
  onnx          load_model(.onnx)                    InputError
  pt2           load_model(.pt2)                     InputError
  sidecar       load_model(.pt) with MODEL.json      InputError
  manifest      Bundle.read_manifest                 InputError
                trt.check_manifest                   EngineError (EngineMismatch included)
  engine_build  Bundle.read_build_settings,          InputError
                specs.profiles

Each target also checks what an accepted input gives back (round trips, ranges), so a reader
that accepts garbage silently is caught too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

import project_api as api
import seeds


class WrongResult(AssertionError):
    """A reader accepted an input and returned something its contract rules out."""


def check(condition: bool, message: str) -> None:
    if not condition:
        raise WrongResult(message)


REJECTED = object()


class Calls:
    """Runs reader calls of one case; an accepted error means "rejected", and is counted."""

    def __init__(self):
        self.accepted = 0
        self.rejected = 0

    def __call__(self, accepted: tuple[type, ...], fn: Callable, *args, **kwargs):
        try:
            result = fn(*args, **kwargs)
        except accepted:
            self.rejected += 1
            return REJECTED
        self.accepted += 1
        return result


@dataclass(frozen=True)
class Target:
    name: str
    run: Callable[[bytes, Path, Calls], None]
    accepts: str  # the documented error, for reports


def _write(scratch: Path, name: str, data: bytes) -> Path:
    path = scratch / name
    path.write_bytes(data)
    return path


def run_safetensors(data: bytes, scratch: Path, call: Calls) -> None:
    layers = call((api.FormatError,), api.load_layers, _write(scratch, "in.bqq.safetensors", data))
    if layers is REJECTED:
        return
    check(isinstance(layers, dict) and layers, "load_layers returned no layers")
    again_path = scratch / "again.bqq.safetensors"
    api.save_layers(again_path, layers)  # an accepted file must be writable as is
    again = api.load_layers(again_path)
    check(list(again) == list(layers), "layer names change in a save / load round trip")
    for name, weight in layers.items():
        other = again[name]
        check(weight.fields == other.fields, f"{name}: fields change in a round trip")
        for key in ("y_bits", "z_bits", "scales", "bias"):
            a, b = getattr(weight, key), getattr(other, key)
            check((a is None) == (b is None) and (a is None or a.numpy().tobytes() == b.numpy().tobytes()),
                  f"{name}.{key}: bits change in a round trip")


def _npz_sources(path: Path) -> list:
    return [api.SourceModel(path, "onnx", [api.TensorSpec(*spec) for spec in specs]) for specs in seeds.NPZ_SPECS]


def run_npz(data: bytes, scratch: Path, call: Calls) -> None:
    path = _write(scratch, "in.npz", data)
    for source in _npz_sources(path):
        batches = call((api.InputError,), api.load_calibration, path, source)
        if batches is REJECTED:
            continue
        check(bool(batches), "load_calibration returned no batch")
        for batch in batches:
            check(list(batch) == [s.name for s in source.inputs], f"batch keys {list(batch)}")
            rows = {len(a) for a in batch.values()}
            check(len(rows) == 1 and 0 < rows.pop() <= 64, "batches must share 1..64 rows")
            for spec in source.inputs:
                array = batch[spec.name]
                check(array.dtype == np.dtype(spec.dtype), f"{spec.name}: dtype {array.dtype}, spec {spec.dtype}")
                check(array.ndim == len(spec.shape) and all(
                    array.shape[i] == d for i, d in enumerate(spec.shape) if i and isinstance(d, int)),
                    f"{spec.name}: shape {array.shape} does not fit {spec.shape}")
    arrays = call((api.InputError,), api.read_npz, path)  # bqq-validate --inputs reads with it
    if arrays is not REJECTED:
        check(bool(arrays) and all(isinstance(a, np.ndarray) for a in arrays.values()),
              "read_npz returned no arrays")


def run_input_shape(data: bytes, scratch: Path, call: Calls) -> None:
    text = data.decode("utf-8", "surrogateescape")
    parsed = call((api.InputError,), api.parse_input_shape, text)
    if parsed is not REJECTED:
        name, dims, dtype = parsed
        check(all(type(d) is int and d >= 1 for d in dims) and len(dims) >= 1, f"dims {dims}")
        api.TensorSpec(name or "x", dims, dtype)  # a dtype the specs take
        again = (f"{name}:" if name else "") + "x".join(map(str, dims)) + f":{dtype}"
        check(api.parse_input_shape(again) == parsed, f"{again!r} does not parse back to {parsed}")
    texts = text.split(";")
    for known in (None, [api.TensorSpec("x", ("n", 48))], [api.TensorSpec("ids", ("b", 8), "int64"),
                                                           api.TensorSpec("mask", ("b", 8), "bool")]):
        specs = call((api.InputError,), api.specs_from_shapes, texts, known)
        if specs is not REJECTED:
            check(len(specs) == len(texts), "one spec per --input-shape")
            if known:
                check([s.name for s in specs] == [k.name for k in known], "specs must name the model's inputs")


def run_onnx(data: bytes, scratch: Path, call: Calls) -> None:
    path = _write(scratch, "model.onnx", data)
    for shapes in ((), ("2x48",)):
        source = call((api.InputError,), api.load_model, path, input_shapes=shapes)
        if source is not REJECTED:
            check(source.kind == "onnx" and source.onnx_model is not None, "an ONNX source without its model")


def run_pt2(data: bytes, scratch: Path, call: Calls) -> None:
    source = call((api.InputError,), api.load_model, _write(scratch, "model.pt2", data))
    if source is not REJECTED:
        check(source.kind == "exported" and source.inputs and source.module is not None, "a .pt2 source without inputs")


def run_sidecar(data: bytes, scratch: Path, call: Calls) -> None:
    model = scratch / "model.pt"
    if not model.is_file():
        model.write_bytes(seeds.torchscript_model_bytes())
    _write(scratch, "model.json", data)
    for shapes in ((), ("2x1x8x8",)):
        source = call((api.InputError,), api.load_model, model, input_shapes=shapes)
        if source is not REJECTED:
            check(source.kind == "torchscript" and source.inputs, "a TorchScript source without inputs")


def run_manifest(data: bytes, scratch: Path, call: Calls) -> None:
    _write(scratch, "manifest.json", data)
    plugin = scratch / "libbqq_trt_plugin.so"
    if not plugin.is_file():
        plugin.write_bytes(seeds.PLUGIN_BYTES)
    manifest = call((api.InputError,), api.read_manifest, scratch)
    if manifest is REJECTED:
        return
    check(isinstance(manifest, dict), f"read_manifest returned a {type(manifest).__name__} for an existing file")
    for plugin_path in (plugin, None):
        call((api.EngineError,), api.check_manifest, manifest, plugin_path=plugin_path,
             trt_version=seeds.MANIFEST_TRT, device=dict(seeds.MANIFEST_DEVICE))


def run_engine_build(data: bytes, scratch: Path, call: Calls) -> None:
    _write(scratch, "engine_build.json", data)
    settings = call((api.InputError,), api.read_build_settings, scratch)
    if settings is REJECTED:
        return
    check(settings.workspace_mb is None or (type(settings.workspace_mb) is int and settings.workspace_mb >= 1),
          f"workspace_mb {settings.workspace_mb!r}")
    for max_batch in (None, 4):
        profiles = call((api.InputError,), api.profiles, settings.inputs, max_batch)
        if profiles is REJECTED:
            continue
        for p in profiles:
            check(bool(p.name) and len(p.min) == len(p.opt) == len(p.max)
                  and all(type(d) is int for d in (*p.min, *p.opt, *p.max))
                  and all(1 <= a <= b <= c for a, b, c in zip(p.min, p.opt, p.max)), f"profile {p}")


TARGETS = {t.name: t for t in (
    Target("safetensors", run_safetensors, "FormatError"),
    Target("npz", run_npz, "InputError"),
    Target("input_shape", run_input_shape, "InputError"),
    Target("onnx", run_onnx, "InputError"),
    Target("pt2", run_pt2, "InputError"),
    Target("sidecar", run_sidecar, "InputError"),
    Target("manifest", run_manifest, "InputError (read), EngineError (check)"),
    Target("engine_build", run_engine_build, "InputError"),
)}
