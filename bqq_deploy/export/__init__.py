"""bqq-export's machinery: load a model file, export it to ONNX, quantise its linear layers
and rewrite them into BQQMatMul nodes, write the bundle (see docs/ONNX.md)."""

from .loaders import SourceModel, load_model, parse_input_shape
from .options import ExportOptions
from .pipeline import export_bundle

__all__ = ["ExportOptions", "SourceModel", "export_bundle", "load_model", "parse_input_shape"]
