"""ExportOptions: every setting of one export besides the model and the destination."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..config import BQQConfig
from ..errors import InputError
from ..layout import MAX_STACKS
from ..runtime.validation import Tolerances
from ..specs import ShapeRange, parse_shape_range

TARGETS = ("onnx", "trt")
EMBEDDINGS = ("bqq", "float")
# Quality tolerances are off unless the user sets them: what is acceptable depends on the model.
NO_TOLERANCES = Tolerances(min_cosine=None, max_rel=None, min_top1=None)


@dataclass(frozen=True)
class ExportOptions:
    """config            the quantiser settings
    target            "onnx": the ONNX files only; "trt": also the TensorRT engine where
                      TensorRT is installed, else the device kit to build it on the target
    exclude           fnmatch patterns of layers to keep in float (layer, weight or node name)
    calib             unlabeled model inputs for output-aware calibration: an .npz file, a
                      dict of arrays keyed by input name (first dim = samples) or a list of
                      feed dicts; without `val`, a fixed part of it is held out for validation
    val               real inputs the verdict is measured on, in the same forms as calib
    tolerances        quality thresholds against the original model (runtime.Tolerances;
                      default: none set, the numbers are reported and not judged)
    shapes            input shape ranges (ShapeRange or "NAME:MIN/OPT/MAX" strings) for the
                      TensorRT profile and the dynamic dims of a torch export
    force             replace a non-empty output directory
    build_on_device   target "trt": never build here, always leave the device kit
    progress          a progress bar on stderr while solving
    validation_inputs feed dicts of real inputs for the verdict (the in-memory form of val)
    bench_iters       timed ONNX Runtime iterations per model (0: no latency section)
    cache_dir         the solver's per-layer cache (an interrupted export resumes there)
    embeddings        "bqq": embedding tables (Gather on a constant table) are stored packed
                      too; "float": they stay as they are
    embedding_bits    stacks for embedding tables; None: one more than the linears' (a looked-
                      up row is used as it is, with nothing to average its error away:
                      measured on all-MiniLM-L6-v2 in docs/QUANTIZE.md)
    """

    config: BQQConfig = field(default_factory=BQQConfig)
    target: str = "onnx"
    exclude: tuple[str, ...] = ()
    calib: Path | dict | list | None = None
    val: Path | dict | list | None = None
    tolerances: Tolerances = NO_TOLERANCES
    shapes: tuple = ()
    force: bool = False
    build_on_device: bool = False
    progress: bool = True
    validation_inputs: list[dict] | None = None
    bench_iters: int = 50
    cache_dir: Path | None = None
    embeddings: str = "bqq"
    embedding_bits: int | None = None

    def __post_init__(self):
        if self.target not in TARGETS:
            raise InputError(f"--target {self.target!r}: choose one of {', '.join(TARGETS)}")
        if self.build_on_device and self.target != "trt":
            raise InputError("--build-on-device only applies to --target trt")
        if self.embeddings not in EMBEDDINGS:
            raise InputError(f"--embeddings {self.embeddings!r}: choose one of {', '.join(EMBEDDINGS)}")
        if self.embedding_bits is not None and not 1 <= self.embedding_bits <= MAX_STACKS:
            raise InputError(f"--embedding-bits must be in 1..{MAX_STACKS}, got {self.embedding_bits}")
        if self.bench_iters < 0:
            raise InputError(f"bench_iters must be >= 0, got {self.bench_iters}")
        if self.val is not None and self.validation_inputs is not None:
            raise InputError("give validation inputs once: val or validation_inputs")
        object.__setattr__(self, "exclude", tuple(self.exclude))
        object.__setattr__(self, "shapes", tuple(
            s if isinstance(s, ShapeRange) else parse_shape_range(s) for s in self.shapes))

    @property
    def judges_quality(self) -> bool:
        t = self.tolerances
        return any(v is not None for v in (t.min_cosine, t.max_rel, t.min_top1))

    @property
    def embedding_config(self) -> BQQConfig:
        """The quantiser settings for embedding tables."""
        bits = self.embedding_bits or min(math.ceil(self.config.bits) + 1, MAX_STACKS)
        return replace(self.config, bits=bits)
