"""bqq-deploy: Binary Quadratic Quantization from PyTorch to TensorRT."""

from .config import BQQConfig
from .errors import FormatError
from .format import BQQWeight, load_layers, save_layers
from .nn import BQQLinear, QuantizationReport, quantize_model
from .quantize import quantize_weight, quantize_weights

__version__ = "0.1.0"

__all__ = ["BQQConfig", "BQQWeight", "BQQLinear", "FormatError", "QuantizationReport",
           "export_model", "load_layers", "quantize_model", "quantize_weight", "quantize_weights",
           "save_layers", "__version__"]


def __getattr__(name: str):
    # export_model brings in ONNX, ONNX Runtime and graph surgery: imported when first used.
    if name == "export_model":
        from .export.api import export_model

        return export_model
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
