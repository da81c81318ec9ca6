"""One copy of the weights per bundle: the ONNX files keep their graphs and small constants,
and point (ONNX external data) at the bytes of every large tensor instead of holding them.
Packed BQQ tensors point into layers.bqq.safetensors, which already holds them; every other
large tensor goes, once, into weights.bin, however many of the files use it."""

from __future__ import annotations

import hashlib
import mmap
from pathlib import Path

import numpy as np
import onnx
from onnx.external_data_helper import ExternalDataInfo, uses_external_data

from ..format import tensor_spans
from .forms import copy_model
from ..tensors import ALIGN, INLINE_BELOW, TensorFiles, nbytes, point_at, values


class _SharedWeights:
    """weights.bin, appended to as tensors arrive: each distinct tensor's bytes once."""

    def __init__(self, handle):
        self.handle = handle
        self.size = 0
        self.offsets: dict[tuple, int] = {}

    def put(self, key: tuple, raw: bytes) -> int:
        if key not in self.offsets:
            pad = -self.size % ALIGN
            self.handle.write(b"\0" * pad + raw)
            self.offsets[key] = self.size + pad
            self.size += pad + len(raw)
        return self.offsets[key]


def write_onnx_files(directory: Path, models: dict[str, onnx.ModelProto], layers_file: str,
                     weights_file: str, data: TensorFiles | None = None) -> None:
    """Save each model as directory/name with its large tensors as external data in
    directory/layers_file (tensors `<layer>.bqq.<key>` whose bytes equal that file's
    `<layer>.<key>`) or directory/weights_file (everything else, deduplicated). data: where
    the models' own external tensors are (tensors.TensorFiles); each tensor is read once per
    model and copied, never the whole model at once."""
    spans = tensor_spans(directory / layers_file)
    with open(directory / layers_file, "rb") as layers, open(directory / weights_file, "wb") as out, \
            mmap.mmap(layers.fileno(), 0, access=mmap.ACCESS_READ) as layers_data:
        shared = _SharedWeights(out)
        for name, model in models.items():
            model = copy_model(model)
            for tensor in model.graph.initializer:
                if tensor.data_type == onnx.TensorProto.STRING or nbytes(tensor) < INLINE_BELOW:
                    continue
                raw = memoryview(np.ascontiguousarray(values(tensor, data))).cast("B")  # no copy
                span = spans.get(tensor.name.replace(".bqq.", ".", 1)) if ".bqq." in tensor.name else None
                if span is not None and layers_data[span[0]:span[0] + span[1]] == raw:
                    location, offset = layers_file, span[0]
                else:
                    key = (tensor.data_type, tuple(tensor.dims), hashlib.sha256(raw).digest())
                    location, offset = weights_file, shared.put(key, raw)
                point_at(tensor, location, offset, len(raw))
            onnx.save(model, str(directory / name))
    if not shared.size:
        (directory / weights_file).unlink()


def onnx_bytes(path: Path) -> int:
    """Bytes an ONNX file needs: the file plus each external span it references (a span
    referenced twice counts twice; another file's share of the same data file is not
    counted)."""
    model = onnx.load(str(path), load_external_data=False)
    total = Path(path).stat().st_size
    for tensor in model.graph.initializer:
        if uses_external_data(tensor):
            info = ExternalDataInfo(tensor)
            data = Path(path).parent / info.location
            total += info.length or data.stat().st_size - (info.offset or 0)
    return total
