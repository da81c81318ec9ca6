"""ONNX Runtime back end: an ONNX file in an InferenceSession; model-local functions (the
portable BQQMatMul) run as they are."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ..specs import TensorSpec
from .base import Backend
from .ort_session import ort_session

_ORT_DTYPES = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int16)": np.int16,
    "tensor(int8)": np.int8, "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_,
}


class OnnxRuntimeBackend(Backend):
    """An ONNX file in ONNX Runtime (a portable bundle file's packed weights decoded by
    ort_session before the session is created; decode_dir: see ort_session)."""

    def __init__(self, path: Path, providers: Sequence[str] | None = None, *,
                 decode_dir: Path | None = None):
        import onnxruntime as ort

        if providers is None:
            available = ort.get_available_providers()
            providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        options = ort.SessionOptions()
        options.log_severity_level = 4  # errors arrive as exceptions; ORT's log would repeat them
        self.session = ort_session(path, options, providers, decode_dir=decode_dir)
        self.path = Path(path)
        used = self.session.get_providers()
        self.device = "cuda" if used and used[0] == "CUDAExecutionProvider" else "cpu"
        self.name = f"onnxruntime[{used[0] if used else '?'}]:{self.path.name}"
        self._inputs = [TensorSpec(i.name, tuple(i.shape), _ORT_DTYPES.get(i.type, np.float32))
                        for i in self.session.get_inputs()]
        self._outputs = [o.name for o in self.session.get_outputs()]

    def execute(self, prepared: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # ORT on CUDA copies host arrays in and out inside run(): its timings include them.
        return dict(zip(self._outputs, self.session.run(self._outputs, prepared)))
