"""TensorRT back end: a serialised engine with the BQQ plugin, run on a CUDA stream with
I/O bound by tensor name. tensorrt is imported only when an engine is loaded; device memory
and the stream come from torch (a dependency already), so no pycuda/cuda-python is needed."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..bundle import Bundle
from ..errors import EngineError, InputError
from ..specs import TensorSpec
from ..trt.manifest import check_manifest
from ..trt.plugin import find_plugin_library, import_tensorrt, load_plugin_library, make_trt_logger
from .base import Backend

logger = logging.getLogger(__name__)


class TensorRTBackend(Backend):
    """model.engine (+ manifest.json beside it, checked before deserialising)."""

    device = "cuda"

    def __init__(self, path: Path, *, plugin_path=None):
        import torch

        trt = import_tensorrt()
        self.torch, self.trt, self.path = torch, trt, Path(path)
        self.plugin = find_plugin_library(plugin_path, bundle_dir=self.path.parent)
        manifest = Bundle(self.path.parent).read_manifest()
        if manifest is None:
            logger.warning("%s has no %s beside it: TensorRT version, GPU and plugin are not "
                           "checked before loading", self.path, Bundle.MANIFEST)
        else:
            check_manifest(manifest, plugin_path=self.plugin)
        self.trt_logger = make_trt_logger(trt)
        load_plugin_library(trt, self.plugin, self.trt_logger)
        self.runtime = trt.Runtime(self.trt_logger)
        self.engine = self.runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise EngineError(f"TensorRT could not deserialise {self.path}: "
                                         + self._errors())
        self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = {n: self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self._inputs = [TensorSpec(n, tuple(d if d >= 0 else None for d in self.engine.get_tensor_shape(n)),
                                   np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))))
                        for n in names if is_input[n]]
        self._outputs = [n for n in names if not is_input[n]]
        self.name = f"tensorrt:{self.path.name}"

    def _errors(self) -> str:
        return self.trt_logger.errors()

    def prepare(self, feeds):
        torch = self.torch
        bound = self.bind_feeds(feeds)
        buffers = {}
        for spec in self._inputs:
            array = bound[spec.name].astype(spec.dtype, copy=False)
            tensor = torch.from_numpy(np.ascontiguousarray(array)).cuda()
            if not self.context.set_input_shape(spec.name, tuple(tensor.shape)):
                raise InputError(f"input {spec.name}: shape {tuple(tensor.shape)} is outside the "
                                 "engine's optimisation profile (see manifest.json inputs)")
            buffers[spec.name] = tensor
        for name in self._outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise EngineError(f"output {name} has a data-dependent shape {shape}")
            dtype = np.dtype(self.trt.nptype(self.engine.get_tensor_dtype(name)))
            buffers[name] = torch.empty(shape, dtype=_torch_dtype(torch, dtype), device="cuda")
        for name, tensor in buffers.items():
            self.context.set_tensor_address(name, tensor.data_ptr())
        torch.cuda.synchronize()
        return buffers

    def execute(self, buffers):
        # Runs on the current torch stream so that benchmark's CUDA events time it.
        stream = self.torch.cuda.current_stream()
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise EngineError(f"TensorRT enqueue failed: {self._errors()}")
        return buffers

    def run(self, feeds):
        self.trt_logger.lines.clear()
        with self.torch.cuda.stream(self.stream):
            buffers = self.execute(self.prepare(feeds))
        self.stream.synchronize()
        if self.trt_logger.lines:
            raise EngineError(f"TensorRT reported: {self._errors()}")
        return self.fetch(buffers)

    def fetch(self, buffers):
        self.torch.cuda.synchronize()
        return {name: buffers[name].cpu().numpy() for name in self._outputs}


def _torch_dtype(torch, dtype: np.dtype):
    return torch.from_numpy(np.zeros(0, dtype=dtype)).dtype
