"""BQQConfig: every knob of the BQQ quantiser in one place."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class BQQConfig:
    """Settings for quantize_weight / quantize_model.

    bits        stacks p; one stack costs about 1 bit per weight at rank_scale 1
    group_size  block shape: an int for square g x g blocks, or (g_r, g_c)
    rank_scale  s in l = round(s * g_r*g_c / (g_r+g_c))
    steps       annealing steps per stack
    seed        makes the solver deterministic on a given device
    device      "auto" (CUDA when available), "cpu", "cuda", "cuda:1", ...
    """

    bits: int = 2
    group_size: int | tuple[int, int] = 64
    rank_scale: float = 1.0
    steps: int = 2_000
    seed: int = 0
    device: str = "auto"
    # Annealed mean-field descent (paper defaults).
    t_start: float = 0.2
    t_end: float = 0.005
    eta: float = 0.06
    zeta: float = 4.0

    def __post_init__(self):
        rows, cols = self.group_shape
        if not 1 <= self.bits <= 16:
            raise ValueError(f"bits must be in 1..16, got {self.bits}")
        if not (1 <= rows <= 4096 and 1 <= cols <= 4096):
            raise ValueError(f"group_size must be in 1..4096, got {self.group_size}")
        if self.rank_scale <= 0:
            raise ValueError(f"rank_scale must be positive, got {self.rank_scale}")
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps}")

    @property
    def group_shape(self) -> tuple[int, int]:
        if isinstance(self.group_size, int):
            return (self.group_size, self.group_size)
        rows, cols = self.group_size
        return (int(rows), int(cols))

    @property
    def rank(self) -> int:
        rows, cols = self.group_shape
        return max(1, round(self.rank_scale * rows * cols / (rows + cols)))

    def to_dict(self) -> dict:
        return asdict(self)
