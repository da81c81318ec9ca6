"""bqq-export's machinery: load a model file, export it to ONNX, quantise its linear layers
and rewrite them into BQQMatMul nodes, write the bundle (see docs/ONNX.md)."""

from .loaders import InputSpec, SourceModel, load_model, parse_input_shape
from .pipeline import export_bundle

__all__ = ["InputSpec", "SourceModel", "export_bundle", "load_model", "parse_input_shape"]
