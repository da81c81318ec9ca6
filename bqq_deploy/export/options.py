"""ExportOptions: every setting of one export besides the model and the destination."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from ..config import BQQConfig
from ..errors import InputError
from ..layout import MAX_STACKS

TARGETS = ("onnx", "trt")
EMBEDDINGS = ("bqq", "float")


@dataclass(frozen=True)
class ExportOptions:
    """config            the quantiser settings
    target            "onnx": the ONNX files only; "trt": also the TensorRT engine where
                      TensorRT is installed, else the device kit to build it on the target
    exclude           fnmatch patterns of layers to keep in float (layer, weight or node name)
    calib             .npz of unlabeled model inputs for output-aware calibration
    force             replace a non-empty output directory
    build_on_device   target "trt": never build here, always leave the device kit
    progress          a progress bar on stderr while solving
    validation_inputs feed dicts for the accuracy section (default: random samples)
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
    calib: Path | None = None
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
        object.__setattr__(self, "exclude", tuple(self.exclude))

    @property
    def embedding_config(self) -> BQQConfig:
        """The quantiser settings for embedding tables."""
        bits = self.embedding_bits or min(self.config.bits + 1, MAX_STACKS)
        return replace(self.config, bits=bits)
