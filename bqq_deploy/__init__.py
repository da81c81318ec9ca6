"""bqq-deploy: Binary Quadratic Quantization from PyTorch to TensorRT."""

from .config import BQQConfig
from .format import BQQWeight, FormatError, load_layers, save_layers
from .nn import BQQLinear

__version__ = "0.1.0"

__all__ = ["BQQConfig", "BQQWeight", "BQQLinear", "FormatError", "load_layers", "save_layers",
           "__version__"]
