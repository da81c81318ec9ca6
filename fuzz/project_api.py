"""Every bqq_deploy name the Python fuzz harnesses and seed generators use, imported in this
one place: when the package moves, repoint the imports here and nothing else."""

# isort: off
from bqq_deploy.errors import EngineError, FormatError, InputError
from bqq_deploy.format import BQQWeight, load_layers, pack_bits, save_layers
from bqq_deploy.specs import TensorSpec, profiles, read_npz
from bqq_deploy.export import SourceModel, load_model, parse_input_shape
from bqq_deploy.export.loaders import specs_from_shapes
from bqq_deploy.export.pipeline import load_calibration
from bqq_deploy.bundle import Bundle
from bqq_deploy.trt import check_manifest
# isort: on


def read_manifest(bundle_dir):
    """manifest.json of a bundle directory, as the TensorRT backend reads it."""
    return Bundle(bundle_dir).read_manifest()


def read_build_settings(bundle_dir):
    """engine_build.json of a bundle directory, as bqq-build reads it."""
    return Bundle(bundle_dir).read_build_settings()


__all__ = ["BQQWeight", "EngineError", "FormatError", "InputError", "SourceModel", "TensorSpec",
           "check_manifest", "load_calibration", "load_layers", "load_model", "pack_bits",
           "parse_input_shape", "profiles", "read_build_settings", "read_manifest",
           "read_npz", "save_layers", "specs_from_shapes"]
