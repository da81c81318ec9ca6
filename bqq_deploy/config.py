"""BQQConfig: every knob of the BQQ quantiser in one place."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from .errors import InputError
from .layout import MAX_GROUP, MAX_RANK, MAX_STACKS


@dataclass(frozen=True)
class BQQConfig:
    """Settings for quantize_weight / quantize_model.

    bits        stacks p; one stack costs about 1 bit per weight at rank_scale 1. A fraction
                (2.5) is an average over the layers, with calibration only: every layer
                gets floor or ceil of it, the extra stacks going where a measured
                sensitivity says they buy most (docs/QUANTIZE.md, "bit budget")
    group_size  block shape: an int for square g x g blocks, or (g_r, g_c)
    rank_scale  s in l = round(s * g_r*g_c / (g_r+g_c))
    steps       annealing steps per stack
    seed        makes the solver deterministic on a given device
    device      "auto" (CUDA when available), "cpu", "cuda", "cuda:1", ...
    init        "svd": signs of the rank-l truncated SVD, annealed from warm_t_start to
                warm_t_end with step warm_eta, the signs softened to 0.5 +- warm_strength/2
                and each block divided by warm_norm x its RMS; "random": the paper's start
                (t_start to t_end, eta, blocks divided by their range)
    scale_interval  steps between exact scale solves while annealing (the paper: 1)
    flip_rounds rounds of exact greedy bit flips after thresholding (0 = off)
    joint_refine  re-solve all stacks' scales together by least squares after the greedy pass
    early_stop_tol  stop annealing when the relaxed energy changes less than this (relative)
                over a window; 0 = off
    calib_damp  ridge on H = X^T X / N, relative to its mean diagonal (calibration only)
    calib_bits  with calibration inputs: solve the bits on the output error (output-aware
                sweep); False: data-free bits, only the scales refit on the output error
    calib_guard with calibration inputs: also solve the layer data-free and keep whichever
                has the lower output error on held-out calibration rows
    bias_correction  with calibration inputs: bias += mean(X) (W - W_hat)^T
    batch_weights  most padded weights solved in one batch (memory bound)

    Defaults (= preset "balanced"), chosen by measurement (docs/QUANTIZE.md): 64 x 64 blocks,
    l = 32 (one 32-bit word per packed row, 1.02 bits/weight per stack with scales) are what
    the kernels read fastest; 1,000 annealing steps from the SVD warm start through the
    window of temperatures where the bits settle (0.1 -> 0.07), then bit flips: about 20 s
    per million weights at 3 stacks on this project's 2-core CPU, and below round-to-nearest
    at 3 bits on trained weights.
    """

    bits: int | float = 2
    group_size: int | tuple[int, int] = 64
    rank_scale: float = 1.0
    steps: int = 1_000
    seed: int = 0
    device: str = "auto"
    # Annealed mean-field descent (paper defaults).
    t_start: float = 0.2
    t_end: float = 0.005
    eta: float = 0.06
    zeta: float = 4.0
    # Beyond the paper (docs/QUANTIZE.md has the measurements behind each default).
    init: str = "svd"
    warm_t_start: float = 0.1
    warm_t_end: float = 0.07
    warm_strength: float = 0.95
    warm_eta: float = 0.25
    warm_norm: float = 7.5
    scale_interval: int = 2
    flip_rounds: int = 30
    early_stop_tol: float = 0.0
    joint_refine: bool = True
    # Calibration (used when calibration inputs are given).
    calib_damp: float = 0.1
    calib_bits: bool = True
    calib_guard: bool = True
    bias_correction: bool = True
    # Solver batch size in (padded) weights: bounds memory, several layers share a batch.
    batch_weights: int = 4_000_000

    def __post_init__(self):
        rows, cols = self.group_shape
        if isinstance(self.bits, bool) or not isinstance(self.bits, (int, float)) \
                or not 1 <= self.bits <= MAX_STACKS:
            raise InputError(f"bits must be in 1..{MAX_STACKS} (a number), got {self.bits!r}")
        if self.bits == int(self.bits):  # 3.0 is 3 stacks: one spelling, one cache key
            object.__setattr__(self, "bits", int(self.bits))
        if not (1 <= rows <= MAX_GROUP and 1 <= cols <= MAX_GROUP):
            raise InputError(f"group_size must be in 1..{MAX_GROUP}, got {self.group_size}")
        if self.rank_scale <= 0:
            raise InputError(f"rank_scale must be positive, got {self.rank_scale}")
        if self.rank > MAX_RANK:
            raise InputError(f"rank_scale {self.rank_scale} gives rank {self.rank}; the format "
                             f"allows at most {MAX_RANK}")
        if self.steps < 0:
            raise InputError(f"steps must be >= 0, got {self.steps}")
        if self.init not in ("svd", "random"):
            raise InputError(f"init must be 'svd' or 'random', got {self.init!r}")
        if min(self.t_start, self.t_end, self.warm_t_start, self.warm_t_end) < 0:
            raise InputError("temperatures (t_start, t_end, warm_t_start, warm_t_end) must be >= 0")
        if self.warm_norm <= 0 or self.warm_eta <= 0:
            raise InputError(f"warm_norm and warm_eta must be positive, got {self.warm_norm}, "
                             f"{self.warm_eta}")
        if self.scale_interval < 1:
            raise InputError(f"scale_interval must be >= 1, got {self.scale_interval}")
        if self.flip_rounds < 0:
            raise InputError(f"flip_rounds must be >= 0, got {self.flip_rounds}")
        if self.calib_damp < 0:
            raise InputError(f"calib_damp must be >= 0, got {self.calib_damp}")
        if self.batch_weights < 1:
            raise InputError(f"batch_weights must be >= 1, got {self.batch_weights}")
        if self.device != "auto":
            _check_device(self.device)

    @property
    def group_shape(self) -> tuple[int, int]:
        if isinstance(self.group_size, int):
            return (self.group_size, self.group_size)
        rows, cols = self.group_size
        return (int(rows), int(cols))

    @property
    def stack_range(self) -> tuple[int, int]:
        """(fewest, most) stacks a layer gets: (p, p) for whole bits, else floor and ceil."""
        return math.floor(self.bits), math.ceil(self.bits)

    @property
    def stacks(self) -> int:
        """The stacks of every layer; InputError for an average (bits=2.5), which the driver
        resolves per layer."""
        if self.bits != int(self.bits):
            raise InputError(f"bits={self.bits} is an average over layers; this needs one "
                             "stack count per layer")
        return int(self.bits)

    @property
    def rank(self) -> int:
        rows, cols = self.group_shape
        return max(1, round(self.rank_scale * rows * cols / (rows + cols)))

    @classmethod
    def preset(cls, name: str, **overrides) -> "BQQConfig":
        """Named settings: "fast" (seconds per million weights, for trying things out),
        "balanced" (the default: a 10M-weight model in minutes on a laptop CPU) and "best"
        (long annealing, paper-like quality). Keyword overrides replace single fields.
        Measured times and errors per preset: docs/QUANTIZE.md."""
        if name not in PRESETS:
            raise InputError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    def to_dict(self) -> dict:
        return asdict(self)


# The settings behind BQQConfig.preset (docs/QUANTIZE.md: how they were chosen).
PRESETS: dict[str, dict] = {
    "fast": {"steps": 100, "flip_rounds": 30, "joint_refine": True},
    "balanced": {},  # the dataclass defaults
    "best": {"steps": 3_000, "flip_rounds": 100, "joint_refine": True},
}


def _check_device(name: str) -> None:
    """InputError unless name is a torch device this machine has."""
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as exc:
        raise InputError(f"device {name!r} is not a torch device ({str(exc).split('.')[0]})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {name!r}: no CUDA device is available here (use cpu or auto)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise InputError(f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device.type not in ("cpu", "cuda"):
        raise InputError(f"device {name!r}: the solver runs on cpu or cuda")
