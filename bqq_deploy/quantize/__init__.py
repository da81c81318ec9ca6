"""BQQ quantisation: `quantize_weight` / `quantize_weights` (the driver) over the solver's
mathematics (`solver`), with calibration statistics (`calibration`), the resumable layer
cache (`cache`) and the rule that picks which layers are worth quantising (`selection`)."""

from .calibration import InputStatistics
from .driver import quantize_weight, quantize_weights

__all__ = ["InputStatistics", "quantize_weight", "quantize_weights"]
