"""The bit budget: with bits=2.5 (an average) every layer gets floor or ceil of it, the
extra stacks going to the layers where a measured sensitivity drop per weight is largest.
Greedy stacks make the extra stack a residual solve on top of the others, so the drop of a
layer is measured on prefixes of one data-free solve (calibrated.fewer_stacks)."""

from __future__ import annotations

import logging

_log = logging.getLogger(__name__)


def allocate(sizes: dict[str, int], drops: dict[str, float], average: float, lo: int, hi: int) -> dict[str, int]:
    """Stacks per layer: every layer lo, then hi for the layers with the largest drop per
    weight (drops[name]: what the extra stack buys) while the average stays <= `average`.
    A layer that does not fit in what is left is passed over for smaller ones."""
    total = sum(sizes.values())
    left = (average - lo) * total / (hi - lo) if hi > lo else 0.0
    chosen = {name: lo for name in sizes}
    for name in sorted(sizes, key=lambda n: (-drops[n] / sizes[n], n)):
        if drops[name] > 0 and sizes[name] <= left:
            chosen[name] = hi
            left -= sizes[name]
    deeper = [n for n in sizes if chosen[n] == hi and hi > lo]
    mean = sum(chosen[n] * sizes[n] for n in sizes) / max(total, 1)
    _log.info("bqq: bit budget %g stacks: %d layer(s) with %d, %d with %d (%.3f stacks per weight)%s",
              average, len(sizes) - len(deeper), lo, len(deeper), hi, mean,
              f"; {hi} stacks: {', '.join(deeper)}" if deeper else "")
    return chosen
