"""The per-layer result cache that lets an interrupted or repeated quantisation resume: one
<key>.bqq.safetensors per solved layer (key = hash of the weight, bias, calibration statistics
and config) with its solver statistics in a <key>.json side file, each written atomically."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from ..atomic import atomic_write_bytes
from ..config import BQQConfig
from ..errors import FormatError
from ..format import BQQWeight, load_layers, save_layers


# BQQConfig fields read only when a layer has calibration inputs.
_CALIBRATION_FIELDS = frozenset({"calib_damp", "calib_bits", "calib_guard", "bias_correction"})


class LayerCache:
    def __init__(self, directory: str | Path):
        self.directory = Path(directory)

    @staticmethod
    def key(weight: torch.Tensor, config: BQQConfig, bias, inputs) -> str:
        settings = config.to_dict()
        if inputs is None:  # a data-free solve: the calibration settings do not change it
            settings = {k: v for k, v in settings.items() if k not in _CALIBRATION_FIELDS}
        digest = hashlib.sha256()
        digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
        tensors = [weight, bias] + (inputs.fingerprint() if inputs is not None else [None])
        for tensor in tensors:
            if tensor is None:
                digest.update(b"none")
                continue
            wide = torch.float64 if tensor.dtype == torch.float64 else torch.float32
            t = tensor.detach().to("cpu", wide).contiguous()
            digest.update(f"{tuple(t.shape)}{t.dtype}".encode())
            digest.update(t.numpy().tobytes())
        return digest.hexdigest()[:32]

    def _path(self, key: str) -> Path:
        return self.directory / f"{key}.bqq.safetensors"

    def load(self, key: str) -> BQQWeight | None:
        """The cached layer, or None when absent or unreadable (it is then solved again)."""
        path = self._path(key)
        if not path.exists():
            return None
        try:
            packed = load_layers(path)["layer"]
            info_path = path.with_suffix(".json")
            packed.info = json.loads(info_path.read_text()) if info_path.exists() else {}
        except (FormatError, OSError, ValueError, KeyError):
            return None
        packed.info["cache_hit"] = True
        return packed

    def store(self, key: str, packed: BQQWeight) -> None:
        path = self._path(key)
        # Side file first: a layer file without its info is still a valid (resumable) entry.
        atomic_write_bytes(path.with_suffix(".json"), [json.dumps(packed.info).encode()])
        save_layers(path, {"layer": packed})
