"""Which linear layers get quantised: the one rule both front ends (quantize_model on torch
modules, bqq-export on ONNX graphs) apply, on top of what each can structurally replace."""

from __future__ import annotations

import fnmatch
from typing import Iterable

from ..config import BQQConfig
from ..layout import Layout


def excluded(names: Iterable[str], include: Iterable[str] | None = None,
             exclude: Iterable[str] = ()) -> str | None:
    """Why the layer known by any of `names` is left out by the user's fnmatch patterns
    (include None = everything is included), or None."""
    names = list(names)

    def first_match(patterns):
        return next((p for p in patterns for n in names if fnmatch.fnmatchcase(n, p)), None)

    if include is not None and first_match(include) is None:
        return "matches no --include pattern"
    pattern = first_match(exclude)
    return None if pattern is None else f"--exclude {pattern}"


def too_small(out_features: int, in_features: int, config: BQQConfig) -> str | None:
    """Why BQQ does not pay for a [M, K] weight at this config (padded to whole blocks it would
    take at least the 16 bits per weight of fp16), or None."""
    layout = Layout.for_weight(out_features, in_features, config.group_shape, config.rank,
                               config.bits)
    if layout.bits_per_weight >= 16:
        g_r, g_c = config.group_shape
        return (f"too small for group {g_r}x{g_c}: {layout.bits_per_weight:.1f} bits per weight "
                "after padding, not less than fp16")
    return None
