"""Model inputs as every stage sees them: TensorSpec (name, shape with dynamic dims, dtype, and
the TensorRT optimisation-profile range once chosen) and the one function that makes sample
feeds from specs."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .errors import InputError

# dtypes a model input may have (numpy names).
DTYPES = ("float32", "float16", "float64", "int64", "int32", "int16", "int8", "uint8", "bool")
# Size given to a dynamic batch dimension in sample inputs.
SAMPLE_BATCH = 2
# Upper end of the batch range of a TensorRT profile when nothing else is said.
DEFAULT_MAX_BATCH = 8


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
        except TypeError:
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
            if max_batch is not None and lo and lo[0] != hi[0]:
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
        for i, dim in enumerate(self.shape[1:], start=1):
            if not _static(dim):
                raise InputError(f"input {self.name}: dim {i} is dynamic ({dim!r}); give min/opt/max "
                                 "shapes for it (only the batch dim gets a default range)")
            for shape in (lo, opt, hi):
                shape.append(int(dim))
        return tuple(lo), tuple(opt), tuple(hi)

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
        except (TypeError, ValueError):
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
    """Random feeds for specs (concrete_shape): floats N(0, 1), integers 0 or 1, booleans
    True. Good for tracing and for parity between two implementations of the same model;
    never evidence of accuracy on real data."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in specs:
        shape, dtype = spec.concrete_shape(batch), np.dtype(spec.dtype)
        if np.issubdtype(dtype, np.floating):
            feeds[spec.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype == np.bool_:
            feeds[spec.name] = np.ones(shape, dtype)
        else:
            feeds[spec.name] = rng.integers(0, 2, shape).astype(dtype)
    return feeds
