"""PyTorch back end: an nn.Module, a TorchScript file or a torch.export (.pt2) file, on CUDA
when present."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..model_files import exported_input_specs, module_input_specs
from ..specs import TensorSpec
from .base import Backend


class TorchBackend(Backend):
    """A torch.nn.Module, a TorchScript file or a torch.export .pt2 file, on CUDA if present."""

    def __init__(self, module, *, label: str = "module", device: str | None = None,
                 input_specs: list[TensorSpec] | None = None):
        import torch

        self.torch = torch
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.module = module.to(self.device) if hasattr(module, "to") else module
        try:
            self.module.eval()
        except NotImplementedError:  # torch.export modules refuse eval(); they are traced already
            pass
        self.name = f"torch[{self.device}]:{label}"
        self._inputs = input_specs or module_input_specs(self.module)
        # ["output"] for a single tensor; output_0.. or a dict's keys once a run showed more.
        self._outputs = ["output"]

    @classmethod
    def from_file(cls, path: Path) -> "TorchBackend":
        import torch

        if path.suffix == ".pt2":
            program = torch.export.load(str(path))
            return cls(program.module(), label=path.name, input_specs=exported_input_specs(program))
        return cls(torch.jit.load(str(path), map_location="cpu"), label=path.name)

    def prepare(self, feeds: dict[str, np.ndarray]) -> list:
        bound = self.bind_feeds(feeds)
        return [self.torch.from_numpy(array).to(self.device) for array in bound.values()]

    def execute(self, prepared: list):
        with self.torch.inference_mode():
            return self.module(*prepared)

    def fetch(self, raw) -> dict[str, np.ndarray]:
        if isinstance(raw, dict):
            named = dict(raw)
        elif isinstance(raw, (tuple, list)):
            named = {f"output_{i}": value for i, value in enumerate(raw)}
        else:
            named = {"output": raw}
        self._outputs = list(named)
        return {key: value.detach().cpu().numpy() for key, value in named.items()}
