"""Run and check an exported model: `load` a back end (TensorRT, ONNX Runtime or PyTorch),
`validate` it against a reference model, `benchmark` its latency. See docs/RUNTIME.md."""

from ..specs import TensorSpec
from .base import Backend
from .benchmark import LatencyResult, benchmark
from .loading import load
from .ort_session import ort_session
from .validation import OutputMetrics, Tolerances, ValidationResult, validate

__all__ = ["Backend", "LatencyResult", "OutputMetrics", "TensorSpec", "Tolerances",
           "ValidationResult", "benchmark", "load", "ort_session", "validate"]
