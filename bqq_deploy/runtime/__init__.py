"""Run and check an exported model: `load` a back end (TensorRT, ONNX Runtime or PyTorch),
`validate` it against a reference model (or `record` each one's outputs and `compare`
them, one model in memory at a time), `benchmark` its latency. See docs/RUNTIME.md."""

from ..specs import TensorSpec
from .base import Backend
from .benchmark import LatencyResult, benchmark
from .loading import load
from .ort_session import ort_session
from .validation import OutputMetrics, Runs, Tolerances, ValidationResult, compare, record, validate

__all__ = ["Backend", "LatencyResult", "OutputMetrics", "Runs", "TensorSpec", "Tolerances",
           "ValidationResult", "benchmark", "compare", "load", "ort_session", "record", "validate"]
