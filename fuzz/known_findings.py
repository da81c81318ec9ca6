"""Fuzz findings reported and awaiting a fix (fuzz/README.md has the reproducers). Each one
is counted by the fuzz runs but fails them only with --strict; tests/test_fuzz_smoke.py
marks a harness that hits one as xfail. Delete an entry in the commit that fixes it: from
then on the finding fails the smoke test if it comes back."""

# Python targets: {target: {signature: finding}}; signatures as fuzz/pyfuzz.py writes them
# (exception type and the innermost bqq_deploy function).
PYTHON: dict[str, dict[str, str]] = {
    "npz": {
        "BadZipFile in bqq_deploy.export.pipeline.load_calibration": "P2: zip errors (cut archive, bad CRC) escape --calib",
        "error in bqq_deploy.export.pipeline.load_calibration": "P2: zlib.error (corrupt deflate) escapes --calib",
        "NotImplementedError in bqq_deploy.export.pipeline.load_calibration": "P2: unsupported zip compression escapes --calib",
        "EOFError in bqq_deploy.export.pipeline.load_calibration": "P2: an empty file escapes --calib",
        "TokenError in bqq_deploy.export.pipeline.load_calibration": "P2: a member's unparsable .npy header escapes --calib",
        "RuntimeError in bqq_deploy.export.pipeline.load_calibration": "P2: an encrypted zip member escapes --calib",
        "TypeError in bqq_deploy.export.pipeline.load_calibration": "P2: a .npy (not .npz) escapes --calib",
        "ValueError in bqq_deploy.export.pipeline.load_calibration": "P2: astype of a string array escapes --calib",
        "MemoryError in bqq_deploy.export.pipeline.load_calibration": "P3: a member header claiming 2**40 elements",
        "BadZipFile in bqq_deploy.cli.validate._read_npz": "P2: zip errors escape bqq-validate --inputs",
        "error in bqq_deploy.cli.validate._read_npz": "P2: zlib.error escapes bqq-validate --inputs",
        "NotImplementedError in bqq_deploy.cli.validate._read_npz": "P2: unsupported zip compression escapes --inputs",
        "EOFError in bqq_deploy.cli.validate._read_npz": "P2: an empty file escapes bqq-validate --inputs",
        "TokenError in bqq_deploy.cli.validate._read_npz": "P2: an unparsable .npy header escapes --inputs",
        "RuntimeError in bqq_deploy.cli.validate._read_npz": "P2: an encrypted zip member escapes --inputs",
        "TypeError in bqq_deploy.cli.validate._read_npz": "P2: a .npy (not .npz) escapes bqq-validate --inputs",
        "MemoryError in bqq_deploy.cli.validate._read_npz": "P3: a member header claiming 2**40 elements",
    },
    "input_shape": {
        "ValueError in bqq_deploy.export.loaders.parse_input_shape": "P6: a dimension of > 4300 digits",
    },
    "onnx": {
        "ValueError in bqq_deploy.export.loaders._onnx_specs": "P8: an input elem_type without a DataType name",
    },
    "pt2": {
        "AttributeError in bqq_deploy.export.loaders._load_exported": "P9: program.module() fails outside the try",
        "TypeError in bqq_deploy.export.loaders._load_exported": "P9: program.module() fails outside the try",
    },
    "sidecar": {
        "ValueError in bqq_deploy.export.loaders._sidecar_specs": "P1: a JSON integer of > 4300 digits",
        "ValueError in bqq_deploy.export.loaders._sidecar_outputs": "P1: a JSON integer of > 4300 digits",
        "UnicodeDecodeError in bqq_deploy.export.loaders._sidecar_specs": "P4: a sidecar that is not UTF-8",
        "UnicodeDecodeError in bqq_deploy.export.loaders._sidecar_outputs": "P4: a sidecar that is not UTF-8",
        "RecursionError in bqq_deploy.export.loaders._sidecar_outputs": "P4: deeply nested sidecar JSON (with --input-shape)",
        "ValueError in bqq_deploy.specs.__post_init__": "P7: a dtype numpy rejects with ValueError (\"1e+308\")",
        "MemoryError in bqq_deploy.specs.sample_inputs": "P5: huge input dims allocate before the check",
        "ValueError in bqq_deploy.specs.sample_inputs": "P5: huge input dims (numpy: array is too big)",
    },
    "manifest": {},
    "engine_build": {
        "OverflowError in bqq_deploy.specs.from_dict": "P7: an infinite dimension (1e999)",
        "ValueError in bqq_deploy.specs.__post_init__": "P7: a dtype numpy rejects with ValueError ({\"v\": ...})",
        "UnicodeEncodeError in bqq_deploy.specs.__post_init__": "P7: a dtype string with a lone surrogate",
        "IndexError in bqq_deploy.specs.with_profile": "P7: an empty max shape with max_batch",
    },
}
