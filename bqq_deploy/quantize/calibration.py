"""Calibration statistics of one layer's inputs, the one form in which calibration data
reaches the solver: E[x x^T] (for the output error tr(E H E^T)) and E[x] (for the bias
correction), accumulated batch by batch so no front end keeps activation rows around.
Both front ends (quantize_model's forward hooks, bqq-export's ONNX Runtime capture) feed
rows into an InputStatistics per layer."""

from __future__ import annotations

import torch


class InputStatistics:
    """Running sums of a layer's input rows x [N, K] (float64)."""

    def __init__(self, features: int):
        self.features = features
        self.rows = 0
        self._gram = torch.zeros(features, features, dtype=torch.float64)
        self._sum = torch.zeros(features, dtype=torch.float64)

    @classmethod
    def of(cls, rows: torch.Tensor) -> "InputStatistics":
        stats = cls(rows.shape[-1])
        stats.add(rows)
        return stats

    def add(self, rows: torch.Tensor) -> None:
        """Add input rows [..., K] (every leading dimension is a row)."""
        rows = rows.detach().reshape(-1, rows.shape[-1]).to("cpu", torch.float64)
        if rows.shape[1] != self.features:
            raise ValueError(f"calibration rows have {rows.shape[1]} features, expected {self.features}")
        self._gram += rows.T @ rows
        self._sum += rows.sum(0)
        self.rows += rows.shape[0]

    @property
    def gram(self) -> torch.Tensor:
        """E[x x^T] [K, K]."""
        return self._gram / max(self.rows, 1)

    @property
    def mean(self) -> torch.Tensor:
        """E[x] [K]."""
        return self._sum / max(self.rows, 1)

    def hessian(self, damp: float) -> torch.Tensor:
        """E[x x^T] + damp * mean(diag) I: the output-error metric, ridged so that directions
        the calibration data never excites still count (as weight error)."""
        gram = self.gram
        ridge = damp * float(gram.diagonal().mean().clamp_min(1e-12))
        return gram + ridge * torch.eye(self.features, dtype=gram.dtype)

    def output_mse(self, error: torch.Tensor) -> float:
        """Mean squared output error E[(x E^T)^2] of a weight error E [M, K] on these inputs."""
        error = error.to("cpu", torch.float64)
        return float(((error @ self.gram) * error).sum() / error.shape[0])

    def is_finite(self) -> bool:
        return bool(torch.isfinite(self._sum).all() and torch.isfinite(self._gram).all())

    def fingerprint(self) -> list[torch.Tensor]:
        """Tensors that identify these statistics (for cache keys)."""
        return [self._gram, self._sum, torch.tensor([self.rows], dtype=torch.float64)]
