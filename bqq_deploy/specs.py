"""Model inputs as every stage sees them: TensorSpec (name, shape with dynamic dims, dtype, and
the TensorRT optimisation-profile range once chosen), the --shapes grammar and the rule that
gives every dynamic dimension a range, and the one function that makes sample feeds."""

from __future__ import annotations

import math
import re
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .errors import InputError

# dtypes a model input may have (numpy names).
DTYPES = ("float32", "float16", "float64", "int64", "int32", "int16", "int8", "uint8", "bool")
# Size given to a dynamic batch dimension in sample inputs.
SAMPLE_BATCH = 2
# Largest probe feed made from specs (a shape that asks for more is surely a mistake).
MAX_PROBE_ELEMENTS = 1 << 28
# Largest array an .npz of model inputs may declare (its header is read before its data).
MAX_ARRAY_BYTES = 1 << 33
# Upper end of the batch range of a TensorRT profile when nothing else is said.
DEFAULT_MAX_BATCH = 8
# Range (min, opt, max) of a dynamic dimension other than the batch when neither --shapes nor
# the model says otherwise. Such a dimension is nearly always a sequence length: 512 is the
# longest sequence of the BERT family (max_position_embeddings) and of most sentence encoders,
# 128 covers a typical sentence or short passage; real data, when given, sets opt instead.
DEFAULT_DIM_RANGE = (1, 128, 512)


def _static(dim) -> bool:
    return isinstance(dim, (int, np.integer)) and not isinstance(dim, bool) and dim > 0


@dataclass(frozen=True)
class TensorSpec:
    """One model input. shape: ints for fixed dims; a str (symbolic name) or None for a dynamic
    dim; () when unknown. min/opt/max: the optimisation-profile shapes, when chosen."""

    name: str
    shape: tuple = ()
    dtype: str = "float32"
    min: tuple[int, ...] | None = None
    opt: tuple[int, ...] | None = None
    max: tuple[int, ...] | None = None

    def __post_init__(self):
        try:
            dtype = np.dtype(self.dtype).name
        except (TypeError, ValueError):  # ValueError: odd strings, lone surrogates
            raise InputError(f"input {self.name}: unknown dtype {self.dtype!r}") from None
        if dtype not in DTYPES:
            raise InputError(f"input {self.name}: unsupported dtype {dtype} (supported: "
                             f"{', '.join(DTYPES)})")
        object.__setattr__(self, "dtype", dtype)
        object.__setattr__(self, "shape", tuple(int(d) if _static(d) else d for d in self.shape))

    @property
    def has_profile(self) -> bool:
        return self.min is not None

    def concrete_shape(self, batch: int = SAMPLE_BATCH) -> tuple[int, ...]:
        """The shape of a sample input: a dynamic batch (dim 0) becomes `batch`, other dynamic
        dims 1, or the profile's opt shape when there is one."""
        if self.opt is not None:
            return tuple(self.opt)
        return tuple(int(d) if _static(d) else (batch if i == 0 else 1)
                     for i, d in enumerate(self.shape))

    def with_profile(self, max_batch: int | None = None) -> "TensorSpec":
        """This spec with min/opt/max. Without a profile, only the batch dim (dim 0) may be
        dynamic: it becomes 1..max(batch, max_batch), optimised for a numeric batch size
        (e.g. from --input-shape 4x...) or 1; every other dim must be fixed. max_batch also
        overrides the upper end of an existing dynamic batch range."""
        if self.has_profile:
            lo, mid, hi = (tuple(int(d) for d in s) for s in (self.min, self.opt, self.max))
            if not lo or not len(lo) == len(mid) == len(hi):
                raise InputError(f"input {self.name}: min, opt and max must be shapes of one "
                                 f"rank, got min {lo}, opt {mid}, max {hi}")
            if max_batch is not None and lo[0] != hi[0]:
                lo, mid = ((min(s[0], max_batch),) + s[1:] for s in (lo, mid))
                hi = (max_batch,) + hi[1:]
        else:
            lo, mid, hi = self._batch_profile(max_batch or DEFAULT_MAX_BATCH)
        if not (len(lo) == len(mid) == len(hi)) or any(
                not 1 <= a <= b <= c for a, b, c in zip(lo, mid, hi)):
            raise InputError(f"input {self.name}: profile needs 1 <= min <= opt <= max per dim, "
                             f"got min {lo}, opt {mid}, max {hi}")
        return replace(self, min=lo, opt=mid, max=hi)

    def _batch_profile(self, max_batch: int) -> tuple[tuple[int, ...], ...]:
        if not self.shape:
            raise InputError(f"input {self.name}: no shape known to build a profile on")
        batch = int(self.shape[0]) if _static(self.shape[0]) else 1
        lo, opt, hi = [1], [batch], [max(batch, max_batch)]
        for dim in self.shape[1:]:
            for shape, value in zip((lo, opt, hi), (dim,) * 3 if _static(dim) else DEFAULT_DIM_RANGE):
                shape.append(int(value))
        return tuple(lo), tuple(opt), tuple(hi)

    def range_text(self) -> str:
        """The profile as --shapes writes it: NAME:MIN/OPT/MAX."""
        dims = lambda shape: "x".join(map(str, shape))  # noqa: E731
        return f"{self.name}:{dims(self.min)}/{dims(self.opt)}/{dims(self.max)}"

    def to_dict(self) -> dict:
        out = {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}
        if self.has_profile:
            out.update(min=list(self.min), opt=list(self.opt), max=list(self.max))
        return out

    @classmethod
    def from_dict(cls, data) -> "TensorSpec":
        """A spec from to_dict's form (every key but name optional); InputError when malformed."""
        if not isinstance(data, dict) or not isinstance(data.get("name"), str) or not data["name"]:
            raise InputError(f"input spec without a name: {data!r}")
        try:
            ranges = {key: tuple(int(d) for d in data[key]) if data.get(key) is not None else None
                      for key in ("min", "opt", "max")}
            shape = tuple(d if isinstance(d, (int, str)) or d is None else int(d)
                          for d in data.get("shape") or ())
        except (TypeError, ValueError, OverflowError):  # OverflowError: an infinite dimension
            raise InputError(f"input spec {data['name']!r}: malformed shape or range {data!r}") from None
        if (ranges["min"] is None) != (ranges["max"] is None) or (
                ranges["min"] is not None and ranges["opt"] is None):
            raise InputError(f"input spec {data['name']!r}: give all of min, opt and max or none")
        return cls(data["name"], shape, data.get("dtype") or "float32", **ranges)


def profiles(specs, max_batch: int | None = None) -> list[TensorSpec]:
    """Every spec with its optimisation-profile range (TensorSpec.with_profile)."""
    specs = [s if isinstance(s, TensorSpec) else TensorSpec.from_dict(s) for s in specs]
    if not specs:
        raise InputError("no input specs given")
    return [spec.with_profile(max_batch) for spec in specs]


def sample_inputs(specs, seed: int = 0, batch: int = SAMPLE_BATCH) -> dict[str, np.ndarray]:
    """Probe feeds for specs (concrete_shape): floats N(0, 1); integers all 1 and booleans all
    True, the one value every index input accepts (a token id, a mask, a type id, a position)
    without fully masking a row. Good for tracing and for parity between two implementations
    of the same model; never evidence of accuracy (see has_integer_inputs)."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in specs:
        shape, dtype = spec.concrete_shape(batch), np.dtype(spec.dtype)
        if math.prod(shape) > MAX_PROBE_ELEMENTS:
            raise InputError(f"input {spec.name}: a probe of shape {list(shape)} would hold "
                             f"{math.prod(shape):,} elements; give smaller shapes (--shapes)")
        if np.issubdtype(dtype, np.floating):
            feeds[spec.name] = rng.standard_normal(shape).astype(dtype)
        else:
            feeds[spec.name] = np.ones(shape, dtype)
    return feeds


_NPY_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0,
                       (2, 0): np.lib.format.read_array_header_2_0}


def read_npz(path: str | Path) -> dict[str, np.ndarray]:
    """The arrays of an .npz file of model inputs. Each member's .npy header is checked before
    its data is read (no object arrays, at most MAX_ARRAY_BYTES, no more than the member
    holds), so a damaged or hostile file is an InputError, never a crash or a huge
    allocation."""
    arrays = {}
    try:
        with zipfile.ZipFile(path) as archive:
            for member in archive.infolist():
                if not member.filename.endswith(".npy"):
                    raise InputError(f"{path}: member {member.filename!r} is not an .npy array")
                with archive.open(member) as handle:
                    version = np.lib.format.read_magic(handle)
                    read_header = _NPY_HEADER_READERS.get(version)
                    if read_header is None:
                        raise InputError(f"{path}: array {member.filename!r} has .npy format "
                                         f"version {version}, not 1.0 or 2.0")
                    shape, _, dtype = read_header(handle)
                    nbytes = math.prod(shape) * dtype.itemsize
                    if dtype.hasobject or nbytes > min(member.file_size, MAX_ARRAY_BYTES):
                        raise InputError(f"{path}: array {member.filename!r} declares "
                                         f"{list(shape)} {dtype}: {'objects' if dtype.hasobject else f'{nbytes:,} bytes'}, "
                                         f"more than the file holds or than {MAX_ARRAY_BYTES:,} bytes")
                with archive.open(member) as handle:
                    arrays[member.filename[:-4]] = np.lib.format.read_array(handle, allow_pickle=False)
    except InputError:
        raise
    except FileNotFoundError:
        raise
    except Exception as exc:  # zip, zlib, header and data errors of a damaged file
        raise InputError(f"{path}: not a readable .npz file ({type(exc).__name__}: {exc})") from None
    if not arrays:
        raise InputError(f"{path}: holds no arrays")
    return arrays


def integer_inputs(specs) -> list[str]:
    """Names of the inputs that are not floating point (token ids, masks, indices): random
    values for them would be invented data."""
    return [s.name for s in specs if not np.issubdtype(np.dtype(s.dtype), np.floating)]


# --- shape ranges: --shapes NAME:MIN/OPT/MAX ------------------------------------------------

_DIMS = r"\d+(?:x\d+)*"
_RANGE_RE = re.compile(rf"^{_DIMS}(?:/{_DIMS}/{_DIMS})?$")


@dataclass(frozen=True)
class ShapeRange:
    """One --shapes value: the profile of one input (min = opt = max for a fixed shape)."""

    name: str | None
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]
    dtype: str | None = None


def parse_shape_range(text: str) -> ShapeRange:
    """`NAME:MIN/OPT/MAX` (each AxBxC, as trtexec's --minShapes/--optShapes/--maxShapes take
    them, in one value), `NAME:DIMS` for a fixed shape, either with an optional `:DTYPE`
    suffix; NAME may be left out for a one-input model and may itself contain ':'."""
    parts = text.strip().split(":")
    dtype = parts.pop() if len(parts) > 1 and parts[-1] in DTYPES else None
    dims = parts.pop() if parts else ""
    name = ":".join(parts) or None
    usage = (f"--shapes {text!r}: expected NAME:MIN/OPT/MAX such as ids:1x1/1x128/8x512 "
             "(or NAME:DIMS for a fixed shape, optionally with a :DTYPE suffix)")
    if not _RANGE_RE.match(dims):
        raise InputError(usage)
    shapes = [tuple(int(d) for d in part.split("x")) for part in dims.split("/")]
    if max(max(shape) for shape in shapes) >= 2**31:
        raise InputError(f"--shapes {text!r}: a dim of 2**31 or more cannot be a tensor size")
    lo, mid, hi = shapes if len(shapes) == 3 else shapes * 3
    if len({len(lo), len(mid), len(hi)}) != 1:
        raise InputError(f"--shapes {text!r}: min, opt and max need the same number of dims")
    if any(not 1 <= a <= b <= c for a, b, c in zip(lo, mid, hi)):
        raise InputError(f"--shapes {text!r}: need 1 <= min <= opt <= max in every dim")
    return ShapeRange(name, lo, mid, hi, dtype)


def specs_from_ranges(ranges) -> list[TensorSpec]:
    """Input specs made from --shapes alone (a model that declares no input shapes): names
    as given (unnamed: input, input_1, ...), dims that vary symbolic, the range as profile."""
    specs = []
    for index, rng in enumerate(ranges):
        rng = rng if isinstance(rng, ShapeRange) else parse_shape_range(rng)
        name = rng.name or ("input" if index == 0 else f"input_{index}")
        shape = tuple(a if a == c else ("batch" if i == 0 else f"{name}_dim{i}")
                      for i, (a, c) in enumerate(zip(rng.min, rng.max)))
        specs.append(TensorSpec(name, shape, rng.dtype or "float32", rng.min, rng.opt, rng.max))
    return specs


def resolve_profiles(specs: list[TensorSpec], ranges=(), *, hints: dict | None = None,
                     dim_bounds: dict | None = None, traced: bool = False) -> list[TensorSpec]:
    """specs, each with min/opt/max for a TensorRT profile, and with every dim that has a
    range (min < max) dynamic in its shape.

    ranges: ShapeRange values (--shapes), matched by name (all unnamed: in input order). A
    range given for one input also applies to the dims of other inputs that share its
    symbolic name (input_ids and attention_mask share `seq`). Every other dim: a static dim
    stays fixed; the batch (dim 0) when dynamic, or always when traced, is
    1..max(DEFAULT_MAX_BATCH, opt) with opt its static size or 1; any other dynamic dim is
    DEFAULT_DIM_RANGE with opt taken from hints ({input: shape} of real data) and the bounds
    clipped to dim_bounds ({symbol: (min, max)}, e.g. a torch.export Dim's range).

    traced: the specs describe a torch module still to be traced (torch.onnx), so their static
    sizes are sample sizes, not constraints: a range may replace any of them, and the batch
    becomes dynamic. Raises InputError naming the problem."""
    ranges = list(ranges)
    by_name = _match_ranges(specs, ranges)
    symbols: dict[str, tuple[int, int, int]] = {}
    for spec in specs:
        rng = by_name.get(spec.name)
        if rng is None:
            continue
        if spec.shape and len(spec.shape) != len(rng.min):
            raise InputError(f"--shapes {spec.name}: {len(rng.min)} dims given, the input has "
                             f"{len(spec.shape)} ({list(spec.shape)})")
        for i, dim in enumerate(spec.shape):
            given = (rng.min[i], rng.opt[i], rng.max[i])
            if _static(dim) and not traced and given != (dim,) * 3:
                raise InputError(f"--shapes {spec.name}: dim {i} is fixed at {dim} in the model, "
                                 f"got {given[0]}/{given[1]}/{given[2]}")
            if isinstance(dim, str) and dim != "?":
                if symbols.setdefault(dim, given) != given:
                    raise InputError(f"--shapes: dim {dim!r} is shared by several inputs but "
                                     f"given two ranges, {symbols[dim]} and {given}")
    hints, dim_bounds = hints or {}, dim_bounds or {}
    out = []
    for spec in specs:
        rng = by_name.get(spec.name)
        if rng is not None:
            lo, mid, hi = rng.min, rng.opt, rng.max
        else:  # a spec without dims is a scalar (its profile is empty)
            dims = []
            for i, dim in enumerate(spec.shape):
                hint = hints.get(spec.name)
                dims.append(_default_range(i, dim, traced, hint[i] if hint is not None
                                           and len(hint) > i else None, dim_bounds))
                if isinstance(dim, str) and dim != "?":  # inputs sharing a dim share its range
                    dims[-1] = symbols.setdefault(dim, dims[-1])
            lo, mid, hi = (tuple(d[k] for d in dims) for k in range(3)) if dims else ((), (), ())
        shape = tuple(_profiled_dim(spec, i, d, a, c)
                      for i, (d, a, c) in enumerate(zip(spec.shape or (None,) * len(lo), lo, hi)))
        dtype = rng.dtype if rng is not None and rng.dtype else spec.dtype
        out.append(replace(spec, shape=shape, dtype=dtype, min=tuple(lo), opt=tuple(mid), max=tuple(hi)))
    return out


def _profiled_dim(spec: TensorSpec, i: int, dim, lo: int, hi: int):
    """The dim as the shape records it once it has the range lo..hi."""
    if lo == hi:
        return dim if dim is not None and dim != "?" else lo
    if _static(dim) or dim is None or dim == "?":
        return "batch" if i == 0 else f"{spec.name}_dim{i}"
    return dim


def _match_ranges(specs: list[TensorSpec], ranges: list[ShapeRange]) -> dict[str, ShapeRange]:
    names = [spec.name for spec in specs]
    if not ranges:
        return {}
    if all(r.name is None for r in ranges):
        if len(ranges) > len(names):
            raise InputError(f"--shapes: {len(ranges)} unnamed shapes for {len(names)} input(s) "
                             f"({', '.join(names)})")
        return {name: rng for name, rng in zip(names, ranges)}
    if any(r.name is None for r in ranges):
        raise InputError("--shapes: give names for all inputs or for none")
    by_name = {}
    for rng in ranges:
        if rng.name not in names:
            raise InputError(f"--shapes: the model has no input {rng.name!r} (inputs: {', '.join(names)})")
        if rng.name in by_name:
            raise InputError(f"--shapes: input {rng.name!r} given twice")
        by_name[rng.name] = rng
    return by_name


def _default_range(i: int, dim, batch_dynamic: bool, hint: int | None,
                   dim_bounds: dict) -> tuple[int, int, int]:
    if i == 0 and (batch_dynamic or not _static(dim)):
        opt = int(dim) if _static(dim) else 1
        lo, hi = 1, max(DEFAULT_MAX_BATCH, opt)
    elif _static(dim):
        return (int(dim),) * 3
    else:
        lo, opt, hi = DEFAULT_DIM_RANGE
        if hint is not None:
            opt, hi = int(hint), max(hi, int(hint))
    bounds = dim_bounds.get(dim) if isinstance(dim, str) else None
    if bounds is not None:
        lo = max(lo, bounds[0])
        hi = min(hi, bounds[1]) if bounds[1] is not None else hi
        opt = min(max(opt, lo), hi)
    return lo, opt, hi


def describe_profiles(specs: list[TensorSpec]) -> str:
    """One line: each input's dynamic dims as min..max (opt N)."""
    parts = []
    for spec in specs:
        dims = [f"dim {i} {a}..{c} (opt {b})" for i, (a, b, c) in
                enumerate(zip(spec.min, spec.opt, spec.max)) if a != c]
        parts.append(f"{spec.name}: " + (", ".join(dims) if dims else "fixed " + "x".join(map(str, spec.opt))))
    return "; ".join(parts)
