"""What every back end offers: run a model on host arrays, with the execute step (the part
benchmark() times) separate from moving data in and out."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import InputError
from ..specs import TensorSpec


class Backend:
    """A loaded model. Subclasses implement prepare (host arrays -> whatever execute needs,
    e.g. device tensors), execute (the timed part) and fetch (results -> host arrays)."""

    name: str = "backend"
    device: str = "cpu"  # "cuda" when execute runs on a GPU (benchmark then uses CUDA events)
    _inputs: list[TensorSpec]  # set by each subclass's constructor
    _outputs: list[str]

    @property
    def input_specs(self) -> list[TensorSpec]:
        return list(self._inputs)

    @property
    def output_names(self) -> list[str]:
        return list(self._outputs)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run once on host arrays; returns host arrays keyed by output name."""
        return self.fetch(self.execute(self.prepare(feeds)))

    def prepare(self, feeds: dict[str, np.ndarray]) -> Any:
        return self.bind_feeds(feeds)

    def execute(self, prepared: Any) -> Any:
        raise NotImplementedError

    def fetch(self, raw: Any) -> dict[str, np.ndarray]:
        return raw

    def bind_feeds(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Key feeds by this model's input names. Feeds whose name matches an input go to it;
        the others fill the remaining inputs in order (so feeds made for an ONNX file run
        its PyTorch original, whose argument names differ). The counts must agree."""
        names = [spec.name for spec in self.input_specs]
        if len(feeds) != len(names):
            raise InputError(f"{self.name}: model inputs are {names}, got feeds {list(feeds)}")
        matched = {name: feeds[name] for name in names if name in feeds}
        rest = iter(value for key, value in feeds.items() if key not in matched)
        return {name: np.ascontiguousarray(matched[name] if name in matched else next(rest))
                for name in names}
