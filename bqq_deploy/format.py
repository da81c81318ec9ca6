"""The packed BQQ weight (docs/FORMAT.md, version 1): bit packing, the layer container and
safetensors I/O that validates every shape, dtype and byte span before reading. The layout
arithmetic (fields, limits, grid, shapes) is bqq_deploy.layout's."""

from __future__ import annotations

import functools
import json
import math
import os
import struct
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .atomic import atomic_write_bytes
from .errors import FormatError
from .layout import FORMAT_NAME, FORMAT_VERSION, Layout, words_per_row

MAX_HEADER_BYTES = 100_000_000


def pack_bits(bits: torch.Tensor) -> torch.Tensor:
    """Pack a {0,1} tensor [..., l] into int32 words [..., ceil(l/32)], bit q -> word q//32,
    bit q%32 (LSB first). Exact for any l."""
    if bits.dtype == torch.bool:
        bits = bits.to(torch.int64)
    else:
        bits = (bits != 0).to(torch.int64)
    rank = bits.shape[-1]
    n_words = words_per_row(rank)
    padded = torch.nn.functional.pad(bits, (0, 32 * n_words - rank))
    padded = padded.reshape(*bits.shape[:-1], n_words, 32)
    shifts = torch.arange(32, device=bits.device, dtype=torch.int64)
    words = (padded << shifts).sum(dim=-1)  # < 2**32, exact in int64
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def unpack_bits(words: torch.Tensor, rank: int) -> torch.Tensor:
    """Inverse of pack_bits: int32 [..., L] -> uint8 {0,1} [..., rank]."""
    if words.device.type == "cpu":  # numpy's table-driven unpacking: one pass, no int64 copies
        little = np.ascontiguousarray(words.numpy(), dtype="<i4").view(np.uint8)
        return torch.from_numpy(np.unpackbits(little, axis=-1, bitorder="little")[..., :rank])
    shifts = torch.arange(32, device=words.device, dtype=torch.int64)
    bits = (words.to(torch.int64).unsqueeze(-1) >> shifts) & 1
    return bits.reshape(*words.shape[:-1], -1)[..., :rank].to(torch.uint8)


# Byte value -> its 8 bits as float32, least significant first: unpacking by table lookup
# writes the floats in one pass.
_BYTE_BITS = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1,
                           bitorder="little").astype(np.float32)


def _unpack_float(words: np.ndarray, rank: int, scratch: "DecodeScratch", key: str) -> np.ndarray:
    """int32 words [..., L] -> float32 {0, 1} [..., rank], in scratch's array `key`."""
    little = np.ascontiguousarray(words, dtype="<i4").view(np.uint8)
    bits = scratch.array(key, (*little.shape, 8))  # take: 4x fancy indexing; "clip": unbuffered
    np.take(_BYTE_BITS, little, axis=0, out=bits, mode="clip")
    return bits.reshape(*words.shape[:-1], -1)[..., :rank]


# Weights decoded per step of BQQWeight.dequantize (1M: 4 MiB of float32 per temporary).
_DEQUANTIZE_CHUNK = 1 << 20


class DecodeScratch:
    """Float32 temporaries reused by the decode tasks one thread runs one after another:
    allocated afresh, each task's few MB would be mapped and page-faulted again (glibc hands
    blocks this large back to the OS when they are freed), which cost the decode a third of
    its time."""

    def __init__(self):
        self._arrays: dict[str, np.ndarray] = {}

    def array(self, key: str, shape: tuple[int, ...]) -> np.ndarray:
        size = math.prod(shape)
        flat = self._arrays.get(key)
        if flat is None or flat.size < size:
            flat = self._arrays[key] = np.empty(size, np.float32)
        return flat[:size].reshape(shape)


def _popcount(words: np.ndarray) -> np.ndarray:
    """Set bits per packed row: int32 words [..., L] -> float32 [...]."""
    return np.bitwise_count(np.ascontiguousarray(words).view(np.uint32)).sum(-1, dtype=np.float32)


def _host(tensor: torch.Tensor) -> np.ndarray:
    """A tensor's values as a numpy array (a view of a CPU tensor)."""
    return tensor.detach().cpu().numpy()


@dataclass
class BQQWeight:
    """One quantised linear weight in the packed layout of docs/FORMAT.md."""

    out_features: int
    in_features: int
    group_rows: int
    group_cols: int
    rank: int
    y_bits: torch.Tensor  # int32 [p, R, C, g_r, L]
    z_bits: torch.Tensor  # int32 [p, R, C, g_c, L]
    scales: torch.Tensor  # float16 [p, R, C, 4]
    bias: torch.Tensor | None = None  # float32 [M]
    info: dict = field(default_factory=dict, compare=False)  # solver statistics, not stored

    @property
    def stacks(self) -> int:
        return int(self.scales.shape[0])

    @property
    def layout(self) -> Layout:
        return Layout(self.out_features, self.in_features, self.group_rows, self.group_cols,
                      self.rank, self.stacks)

    @property
    def grid(self) -> tuple[int, int]:
        return self.layout.grid

    @property
    def fields(self) -> dict:
        return self.layout.fields

    def validate(self, name: str = "layer") -> "BQQWeight":
        """Check shapes, dtypes, padding bits and scale values; raise FormatError naming the
        tensor at fault."""
        Layout.checked(self.fields, name)
        tensors = {"y_bits": self.y_bits, "z_bits": self.z_bits, "scales": self.scales}
        if self.bias is not None:
            tensors["bias"] = self.bias
        for key, shape in self.layout.shapes().items():
            if key not in tensors:
                continue
            tensor = tensors[key]
            if tensor.dtype != TENSOR_DTYPES[key]:
                raise FormatError(f"{name}.{key}: dtype {tensor.dtype}, expected {TENSOR_DTYPES[key]}")
            if tuple(tensor.shape) != shape:
                raise FormatError(f"{name}.{key}: shape {tuple(tensor.shape)}, expected {shape}")
        # The value checks in numpy: a loader that only decodes (runtime.ort_session) then
        # never starts torch's operator machinery, a few MB of resident memory.
        rank_in_last_word = self.rank - 32 * (words_per_row(self.rank) - 1)
        if rank_in_last_word < 32:
            unused = np.uint32((0xFFFFFFFF << rank_in_last_word) & 0xFFFFFFFF)  # bits >= r
            for key in ("y_bits", "z_bits"):
                if (_host(tensors[key])[..., -1].view(np.uint32) & unused).any():
                    raise FormatError(f"{name}.{key}: bits past rank {self.rank} are set "
                                      "(corrupt data or wrong rank)")
        if not np.isfinite(_host(self.scales)).all():
            raise FormatError(f"{name}.scales: contains inf or NaN")
        if self.bias is not None and not np.isfinite(_host(self.bias)).all():
            raise FormatError(f"{name}.bias: contains inf or NaN")
        return self

    def y(self) -> torch.Tensor:
        """Y as float32 {0,1} [p, R, C, g_r, l]."""
        return unpack_bits(self.y_bits, self.rank).float()

    def z(self) -> torch.Tensor:
        """Z transposed, as float32 {0,1} [p, R, C, g_c, l]."""
        return unpack_bits(self.z_bits, self.rank).float()

    def dequantize(self, out: np.ndarray | None = None) -> torch.Tensor:
        """The dense reconstruction W_hat [M, K] in float32 (for checks, reports and the
        portable ONNX Runtime loader; the forward pass never builds it). Computed with numpy:
        no torch thread start-up per call, which dominated small models on a busy host.
        out: an [M, K] float32/float16 array of any strides (a transposed view too) to write
        W_hat into, a few rows at a time, instead of a new float32 one."""
        dense = np.empty((self.out_features, self.in_features), np.float32) if out is None else out
        scratch = DecodeScratch()
        for task in self.decode_tasks(dense):
            task(scratch)
        return torch.from_numpy(dense)

    def decode_tasks(self, out: np.ndarray) -> list[Callable[[DecodeScratch], None]]:
        """W_hat written into out ([M, K], any strides and float dtype) by independent tasks of
        a few block rows each (disjoint rows of out): run them in any order, on any threads
        (numpy releases the GIL), each thread passing its own DecodeScratch. Pieces of at most
        _DEQUANTIZE_CHUNK weights, because the bits unpacked to floats outnumber the weights
        they make: an embedding table's whole-matrix temporaries would be hundreds of MB."""
        if out.shape != (self.out_features, self.in_features):
            raise ValueError(f"out has shape {out.shape}, W_hat is {(self.out_features, self.in_features)}")
        _, rows, cols, g_r, _ = self.y_bits.shape
        a, b, c, d = _host(self.scales).astype(np.float32).transpose(3, 1, 2, 0)  # each [R, C, p]
        # Bits unpacked straight into [R, C, g, p, l] (the packed words are 32x smaller to
        # permute), so all stacks of a block and its row and column terms are one product:
        # [a_1 Y_1 .. a_p Y_p | r | 1] [Z_1 .. Z_p | 1 | c]^T, r = sum_k b_k (Y_k 1) + d_k and
        # c = sum_k c_k (Z_k 1), written by the matmul straight into out where it can.
        y_words, z_words = (_host(t).transpose(1, 2, 3, 0, 4) for t in (self.y_bits, self.z_bits))
        step = max(1, _DEQUANTIZE_CHUNK // (cols * g_r * self.group_cols))
        return [functools.partial(self._decode_block_rows, out, (a, b, c, d), y_words, z_words, top,
                                  min(rows, top + step)) for top in range(0, rows, step)]

    def _decode_block_rows(self, out: np.ndarray, scales, y_words, z_words, top: int, stop: int,
                           scratch: DecodeScratch) -> None:
        (a, b, c, d), part = scales, slice(top, stop)
        p, rank, g_r, g_c = self.stacks, self.rank, self.group_rows, self.group_cols
        n, cols, depth = stop - top, y_words.shape[1], p * rank  # depth: the product's inner size
        y_aug = scratch.array("y_aug", (n, cols, g_r, depth + 2))
        z_aug = scratch.array("z_aug", (n, cols, g_c, depth + 2))
        np.multiply(_unpack_float(y_words[part], rank, scratch, "y"), a[part, :, None, :, None],
                    out=np.reshape(y_aug[..., :depth], (n, cols, g_r, p, rank), copy=False))
        np.copyto(np.reshape(z_aug[..., :depth], (n, cols, g_c, p, rank), copy=False),
                  _unpack_float(z_words[part], rank, scratch, "z"))
        y_aug[..., depth] = (_popcount(y_words[part]) * b[part, :, None, :]).sum(-1) + d[part].sum(-1)[..., None]
        y_aug[..., depth + 1] = 1
        z_aug[..., depth] = 1
        z_aug[..., depth + 1] = (_popcount(z_words[part]) * c[part, :, None, :]).sum(-1)
        first, last = top * g_r, min(self.out_features, stop * g_r)
        target = out[first:last]
        unpadded = last - first == n * g_r and self.in_features == cols * g_c and out.dtype == np.float32
        if unpadded and target.strides[1] == target.itemsize:  # rows in memory: blocks Y Z^T
            np.matmul(y_aug, z_aug.swapaxes(-1, -2),
                      out=np.reshape(target, (n, g_r, cols, g_c), copy=False).transpose(0, 2, 1, 3))
        elif unpadded and target.strides[0] == target.itemsize:  # W^T in memory: blocks Z Y^T
            np.matmul(z_aug, y_aug.swapaxes(-1, -2),
                      out=np.reshape(target.T, (cols, g_c, n, g_r), copy=False).transpose(2, 0, 1, 3))
        else:  # padded edges, fp16 or odd strides: through a float32 temporary
            blocks = np.matmul(y_aug, z_aug.swapaxes(-1, -2), out=scratch.array("blocks", (n, cols, g_r, g_c)))
            target[...] = blocks.transpose(0, 2, 1, 3).reshape(n * g_r, cols * g_c)[: last - first, : self.in_features]

    @property
    def nbytes(self) -> int:
        """Bytes of the packed weight (bits + scales, bias excluded)."""
        return sum(t.numel() * t.element_size() for t in (self.y_bits, self.z_bits, self.scales))

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.nbytes / (self.out_features * self.in_features)

    def to(self, device) -> "BQQWeight":
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return replace(self, y_bits=move(self.y_bits), z_bits=move(self.z_bits),
                       scales=move(self.scales), bias=move(self.bias))

    def tensors(self, prefix: str) -> dict[str, torch.Tensor]:
        out = {f"{prefix}.y_bits": self.y_bits, f"{prefix}.z_bits": self.z_bits,
               f"{prefix}.scales": self.scales}
        if self.bias is not None:
            out[f"{prefix}.bias"] = self.bias
        return out


TENSOR_DTYPES = {"y_bits": torch.int32, "z_bits": torch.int32,
                 "scales": torch.float16, "bias": torch.float32}
REQUIRED_TENSORS = ("y_bits", "z_bits", "scales")


# ---------------------------------------------------------------------------------------
# safetensors I/O

_ST_DTYPES = {"I32": (torch.int32, np.int32), "F16": (torch.float16, np.float16),
              "F32": (torch.float32, np.float32)}
_ST_NAMES = {torch_dtype: name for name, (torch_dtype, _) in _ST_DTYPES.items()}


def save_layers(path: str | os.PathLike, layers: dict[str, BQQWeight]) -> None:
    """Write layers to one .bqq.safetensors file atomically (docs/FORMAT.md section 4)."""
    if not layers:
        raise FormatError(f"{path}: no layers to save (a BQQ file lists at least one)")
    tensors: dict[str, torch.Tensor] = {}
    meta = {}
    for name, weight in layers.items():
        weight.validate(name)
        meta[name] = weight.fields
        tensors.update(weight.tensors(name))
    header: dict = {"__metadata__": {"format": FORMAT_NAME, "format_version": str(FORMAT_VERSION),
                                     "layers": json.dumps(meta, sort_keys=True)}}
    offset = 0
    blobs = []
    for key in sorted(tensors):
        array = tensors[key].detach().cpu().contiguous()
        blob = array.numpy().tobytes()
        header[key] = {"dtype": _ST_NAMES[array.dtype], "shape": list(array.shape),
                       "data_offsets": [offset, offset + len(blob)]}
        offset += len(blob)
        blobs.append(blob)
    header_bytes = json.dumps(header, separators=(",", ":")).encode()
    header_bytes += b" " * (-len(header_bytes) % 8)  # keep tensor data 8-byte aligned
    atomic_write_bytes(path, [struct.pack("<Q", len(header_bytes)), header_bytes, *blobs])


def _read_header(handle, path: Path) -> tuple[int, dict[str, Layout], dict]:
    """Header length, layer layouts and checked tensor entries of an open .bqq.safetensors
    file (docs/FORMAT.md section 4); no tensor byte is read."""
    size = os.fstat(handle.fileno()).st_size
    if size < 8:
        raise FormatError(f"{path}: {size} bytes, too short for a safetensors header")
    (header_len,) = struct.unpack("<Q", handle.read(8))
    if header_len > min(MAX_HEADER_BYTES, size - 8):
        raise FormatError(f"{path}: header length {header_len} exceeds the file "
                          f"({size} bytes) or the {MAX_HEADER_BYTES}-byte limit (truncated?)")
    try:  # ValueError covers bad UTF-8, bad JSON and integers too long to parse
        header = json.loads(handle.read(header_len))
    except (ValueError, RecursionError) as exc:
        raise FormatError(f"{path}: header is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise FormatError(f"{path}: header is not a JSON object")
    layouts = _parse_metadata(path, header.pop("__metadata__", None))
    return header_len, layouts, _check_entries(path, header, layouts, size - 8 - header_len)


def tensor_spans(path: str | os.PathLike) -> dict[str, tuple[int, int]]:
    """{tensor name: (offset from the start of the file, byte length)} of a validated
    .bqq.safetensors file: where other formats (ONNX external data) can point at its bytes."""
    path = Path(path)
    with open(path, "rb") as handle:
        header_len, _, entries = _read_header(handle, path)
    return {key: (8 + header_len + start, end - start) for key, (_, _, start, end) in entries.items()}


def load_layers(path: str | os.PathLike) -> dict[str, BQQWeight]:
    """Read a .bqq.safetensors file, validating everything listed in docs/FORMAT.md section 4
    before any tensor byte is read. Raises FormatError naming the file and tensor."""
    path = Path(path)
    with open(path, "rb") as handle:
        header_len, layouts, entries = _read_header(handle, path)
        arrays = {}
        for key, (dtype_name, shape, start, end) in entries.items():
            handle.seek(8 + header_len + start)
            blob = handle.read(end - start)
            if len(blob) != end - start:
                raise FormatError(f"{path}: tensor {key}: file truncated")
            arrays[key] = torch.from_numpy(
                np.frombuffer(blob, dtype=_ST_DTYPES[dtype_name][1]).reshape(shape).copy())
    layers = {}
    for name, layout in layouts.items():
        weight = BQQWeight(layout.out_features, layout.in_features, layout.group_rows,
                           layout.group_cols, layout.rank, y_bits=arrays[f"{name}.y_bits"],
                           z_bits=arrays[f"{name}.z_bits"], scales=arrays[f"{name}.scales"],
                           bias=arrays.get(f"{name}.bias"))
        try:
            layers[name] = weight.validate(name)
        except FormatError as exc:
            raise FormatError(f"{path}: {exc}") from None
    return layers


def _parse_metadata(path: Path, meta) -> dict[str, Layout]:
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise FormatError(f"{path}: not a BQQ file (__metadata__.format != {FORMAT_NAME!r})")
    version = meta.get("format_version")
    if version != str(FORMAT_VERSION):
        raise FormatError(f"{path}: format_version {version!r} is not supported "
                          f"(this reader knows version {FORMAT_VERSION})")
    if not isinstance(meta.get("layers"), str):
        raise FormatError(f"{path}: __metadata__.layers must be a JSON string")
    try:
        layer_fields = json.loads(meta["layers"])
    except (ValueError, RecursionError) as exc:
        raise FormatError(f"{path}: __metadata__.layers is not valid JSON ({exc})") from None
    if not isinstance(layer_fields, dict) or not layer_fields:
        raise FormatError(f"{path}: __metadata__.layers lists no layers")
    try:
        return {name: Layout.checked(fields, name) for name, fields in layer_fields.items()}
    except FormatError as exc:
        raise FormatError(f"{path}: {exc}") from None


def _json_int(value) -> int:
    """A JSON integer as such: 1.9, "12" or true are not shapes or offsets."""
    if type(value) is not int:
        raise TypeError(value)
    return value


def _check_entries(path: Path, header: dict, layouts: dict[str, Layout], data_len: int) -> dict:
    """Header entries checked against the layouts; the tensors must tile the data section
    exactly (no gap, no overlap, no trailing bytes), as safetensors itself requires."""
    expected: dict[str, tuple[str, tuple[int, ...]]] = {}
    for name, layout in layouts.items():
        for key, shape in layout.shapes().items():
            expected[f"{name}.{key}"] = (_ST_NAMES[TENSOR_DTYPES[key]], shape)
    entries = {}
    for key, entry in header.items():
        if key not in expected:
            raise FormatError(f"{path}: tensor {key} is not part of any listed layer")
        want_dtype, want_shape = expected[key]
        try:
            dtype_name, shape = entry["dtype"], tuple(_json_int(n) for n in entry["shape"])
            start, end = (_json_int(n) for n in entry["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise FormatError(f"{path}: tensor {key}: malformed header entry {entry!r}") from None
        if dtype_name != want_dtype:
            raise FormatError(f"{path}: tensor {key}: dtype {dtype_name}, expected {want_dtype}")
        if shape != want_shape:
            raise FormatError(f"{path}: tensor {key}: shape {list(shape)}, expected {list(want_shape)}")
        nbytes = math.prod(shape) * _ST_DTYPES[dtype_name][0].itemsize
        if not 0 <= start <= end <= data_len:
            raise FormatError(f"{path}: tensor {key}: bytes [{start}, {end}) lie outside the "
                              f"{data_len}-byte data section (truncated file?)")
        if end - start != nbytes:
            raise FormatError(f"{path}: tensor {key}: {end - start} bytes for shape "
                              f"{list(shape)}, expected {nbytes}")
        entries[key] = (dtype_name, shape, start, end)
    for name in layouts:
        for key in REQUIRED_TENSORS:
            if f"{name}.{key}" not in entries:
                raise FormatError(f"{path}: tensor {name}.{key} is missing")
    spans = sorted((start, end, key) for key, (_, _, start, end) in entries.items())
    for (_, prev_end, prev_key), (start, _, key) in zip(spans, spans[1:]):
        if start < prev_end:
            raise FormatError(f"{path}: tensors {prev_key} and {key} overlap")
    position, previous = 0, "the header"
    for start, end, key in spans:
        if start != position:
            raise FormatError(f"{path}: {start - position} unused bytes between {previous} and "
                              f"tensor {key}")
        position, previous = end, f"tensor {key}"
    if position != data_len:
        raise FormatError(f"{path}: {data_len - position} trailing bytes after the last tensor")
    return entries
