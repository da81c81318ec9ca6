"""Large ONNX tensors on disk. During an export every initializer of the graphs it works on
that is not tiny lives in a file of one working directory (ONNX external data), so a graph in
memory is small whatever the model's size, copying it is cheap, ONNX Runtime loads it from a
path, and a tensor's values are read only while they are needed, one tensor at a time.
Graphs without a TensorFiles (tests, small models built in memory) keep their tensors inline;
values / assign take data=None for them. A bundle's files are read the same way (runtime)."""

from __future__ import annotations

import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Iterator

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.external_data_helper import uses_external_data

from .errors import InputError

# Tensors below this many bytes stay inside the graph (shape constants and the like).
INLINE_BELOW = 1024
# Tensors in a data file start at multiples of this (cache lines; mmap-friendly).
ALIGN = 64
_DATA_FIELDS = ("float_data", "int32_data", "string_data", "int64_data", "double_data",
                "uint64_data", "raw_data")


def external_entry(tensor: onnx.TensorProto) -> tuple[str, int, int | None] | None:
    """(location, offset, length or None) of an external tensor, None for an inline one."""
    if not uses_external_data(tensor):
        return None
    entries = {e.key: e.value for e in tensor.external_data}
    try:
        offset, length = int(entries.get("offset", 0)), entries.get("length")
        length = None if length is None else int(length)
    except ValueError:
        raise InputError(f"tensor {tensor.name!r}: external data offset / length are not "
                         "integers") from None
    if "location" not in entries or offset < 0 or (length is not None and length < 0):
        raise InputError(f"tensor {tensor.name!r}: external data without a location, or with a "
                         "negative offset or length")
    return entries["location"], offset, length


def point_at(tensor: onnx.TensorProto, location: str, offset: int, length: int) -> None:
    """Make tensor (name, dims and data type kept) read its bytes from location."""
    for name in _DATA_FIELDS:
        tensor.ClearField(name)
    del tensor.external_data[:]
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    tensor.data_location = onnx.TensorProto.EXTERNAL


def _safe_location(location: str, tensor: str) -> PurePosixPath:
    path = PurePosixPath(location.replace("\\", "/"))
    if not location or path.is_absolute() or ".." in path.parts:
        raise InputError(f"tensor {tensor!r}: external data location {location!r} is not a "
                         "plain path beside the model")
    return path


class TensorFiles:
    """The external data of graphs whose files are (or will be saved) in the directory root:
    an export's working directory (its caller creates and removes it), or a bundle's."""

    DATA = "bqq-tensors.bin"  # where assign appends

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self._size = (self.root / self.DATA).stat().st_size if (self.root / self.DATA).exists() else 0

    def array(self, tensor: onnx.TensorProto) -> np.ndarray:
        """tensor's values (a new array, read from disk for an external tensor)."""
        entry = external_entry(tensor)
        if entry is None:
            # A copy: to_array may return a read-only view of the protobuf (torch will not
            # wrap one); inline tensors are small.
            return numpy_helper.to_array(tensor).copy()
        location, offset, length = entry
        path = self.root / _safe_location(location, tensor.name)
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type)).newbyteorder("<")
        count = int(np.prod(tensor.dims, dtype=np.int64))
        if length is not None and length != count * dtype.itemsize:
            raise InputError(f"tensor {tensor.name!r}: {length} bytes of external data for "
                             f"{count} {dtype.name} values")
        try:
            with open(path, "rb") as handle:
                size = os.fstat(handle.fileno()).st_size
                if offset + count * dtype.itemsize > size:
                    raise InputError(f"tensor {tensor.name!r}: external data runs past the end of "
                                     f"{location} ({size} bytes)")
                values = np.fromfile(handle, dtype=dtype, count=count, offset=offset)
        except FileNotFoundError:
            raise InputError(f"tensor {tensor.name!r}: external data file {location} not "
                             "found") from None
        return values.astype(dtype.newbyteorder("="), copy=False).reshape(tuple(tensor.dims))

    def assign(self, tensor: onnx.TensorProto, array: np.ndarray, name: str | None = None) -> None:
        """tensor := array (named name, default its own name): inline when tiny, else
        appended to this directory's data file."""
        array = np.ascontiguousarray(array)
        name = tensor.name if name is None else name
        if array.nbytes < INLINE_BELOW:
            tensor.CopyFrom(numpy_helper.from_array(array, name))
            return
        raw = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
        pad = -self._size % ALIGN
        with open(self.root / self.DATA, "ab") as handle:
            handle.write(b"\0" * pad + raw)
        offset, self._size = self._size + pad, self._size + pad + len(raw)
        tensor.Clear()
        tensor.name = name
        tensor.dims.extend(array.shape)
        tensor.data_type = helper.np_dtype_to_tensor_dtype(array.dtype)
        point_at(tensor, self.DATA, offset, len(raw))

    def externalize(self, model: onnx.ModelProto) -> None:
        """Move every inline initializer of model's main graph that is not tiny to disk."""
        for tensor in model.graph.initializer:
            if external_entry(tensor) is None and tensor.ByteSize() >= INLINE_BELOW:
                self.assign(tensor, numpy_helper.to_array(tensor))

    def mapped(self, model: onnx.ModelProto, exclude=()) -> dict[str, np.ndarray]:
        """The external data files model's initializers read (but those at locations in
        exclude), by location, each mapped read-only into memory (read only when used)."""
        files = {}
        for tensor in model.graph.initializer:
            entry = external_entry(tensor)
            if entry is not None and entry[0] not in files and entry[0] not in exclude:
                path = self.root / _safe_location(entry[0], tensor.name)
                if not path.is_file():
                    raise InputError(f"tensor {tensor.name!r}: external data file {path} not found")
                files[entry[0]] = np.memmap(path, dtype=np.uint8, mode="r")
        return files

    def adopt(self, model: onnx.ModelProto, directory: Path) -> None:
        """Make the external data files of model (a file in directory) readable here: copied
        file to file, never loaded (ONNX Runtime refuses data files reached through a
        symbolic link to another directory, and onnx.checker those with several hard links)."""
        for tensor in model.graph.initializer:
            entry = external_entry(tensor)
            if entry is None:
                continue
            location = _safe_location(entry[0], tensor.name)
            if str(location) == self.DATA:
                raise InputError(f"tensor {tensor.name!r}: external data file name {self.DATA} is "
                                 "reserved for bqq-export's own data")
            target, source = self.root / location, Path(directory) / location
            if target.exists():
                continue
            if not source.is_file():
                raise InputError(f"tensor {tensor.name!r}: external data file {source} not found")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)

    def save_path(self, stem: str) -> Path:
        """A new .onnx file name in this directory."""
        return self.root / f"{stem}-{uuid.uuid4().hex[:8]}.onnx"

    def save(self, model: onnx.ModelProto, stem: str = "graph") -> Path:
        """Write model (its external tensors read from here) as a new .onnx file in this
        directory; returns its path."""
        path = self.save_path(stem)
        onnx.save(model, str(path))
        return path

    @contextmanager
    def session_path(self, model: onnx.ModelProto, stem: str = "session") -> Iterator[str]:
        """A path ONNX Runtime can load model from, removed afterwards."""
        path = self.save(model, stem)
        try:
            yield str(path)
        finally:
            path.unlink(missing_ok=True)


def values(tensor: onnx.TensorProto, data: TensorFiles | None = None) -> np.ndarray:
    """tensor's values: inline, or read through data."""
    return numpy_helper.to_array(tensor) if data is None else data.array(tensor)


def assign(tensor: onnx.TensorProto, array: np.ndarray, data: TensorFiles | None = None,
           name: str | None = None) -> None:
    """tensor := array, inline without data, else through data.assign."""
    if data is None:
        tensor.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(array),
                                                tensor.name if name is None else name))
    else:
        data.assign(tensor, array, name)


def nbytes(tensor: onnx.TensorProto) -> int:
    """Bytes of tensor's values, inline or external."""
    entry = external_entry(tensor)
    if entry is not None and entry[2] is not None:
        return entry[2]
    itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
    return int(np.prod(tensor.dims, dtype=np.int64)) * itemsize
