"""Calibration statistics of one layer's inputs, the one form in which calibration data
reaches the solver: E[x x^T] (for the output error tr(E H E^T)) and E[x] (for the bias
correction), accumulated batch by batch so no front end keeps activation rows around.
Both front ends (quantize_model's forward hooks, bqq-export's ONNX Runtime capture) feed
each layer's input activations into an InputStatistics with the batch's token mask.

Two rules every front end gets from here:
- Padding is not data: rows at positions whose token mask is 0 (the attention mask of a
  padded text batch) are dropped. On real text they were 60 % of a padded batch, and
  their states moved every bias correction the wrong way (docs/QUANTIZE.md).
- Every HOLDOUT_EVERY-th sample is held out (its rows go to `held_out`, not into the fit),
  so the driver can check on unseen rows that calibration did not make a layer worse.
"""

from __future__ import annotations

import torch

# Every 8th calibration sample is held out for the guard (1/8 of the rows: enough to rank
# two solutions, little taken from the fit).
HOLDOUT_EVERY = 8


class InputStatistics:
    """Running sums of a layer's input rows x [N, K] (float64), with the held-out rows in a
    second InputStatistics (`held_out`, None when holdout is off)."""

    def __init__(self, features: int, holdout: bool = True):
        self.features = features
        self.rows = 0
        self.samples = 0  # samples seen (fit and held out), for the hold-out rule
        self._gram = torch.zeros(features, features, dtype=torch.float64)
        self._sum = torch.zeros(features, dtype=torch.float64)
        self.held_out = InputStatistics(features, holdout=False) if holdout else None

    @classmethod
    def of(cls, rows: torch.Tensor, holdout: bool = True) -> "InputStatistics":
        stats = cls(rows.shape[-1], holdout)
        stats.add(rows)
        return stats

    def add(self, rows: torch.Tensor, token_mask: torch.Tensor | None = None) -> bool:
        """Add input rows [..., K]. The first dimension indexes samples (a 2-D [N, K] input:
        one row per sample). token_mask marks real positions (nonzero), the others are
        dropped; it applies when its shape is rows' without the last dimension, or when rows
        are 2-D with one row per mask element (flattened tokens). Returns whether it applied
        (a layer that sees pooled or reordered rows does not match the mask)."""
        rows = rows.detach()
        if rows.shape[-1] != self.features:
            raise ValueError(f"calibration rows have {rows.shape[-1]} features, expected {self.features}")
        lead = rows.shape[:-1]
        n_samples = lead[0] if len(lead) else 1
        sample = torch.arange(self.samples, self.samples + n_samples, device=rows.device)
        sample = sample.reshape(-1, *([1] * (len(lead) - 1))).expand(lead) if len(lead) else sample[:1]
        keep = torch.ones(lead, dtype=torch.bool, device=rows.device)
        masked = token_mask is not None and (tuple(token_mask.shape) == tuple(lead) or (
            len(lead) == 1 and token_mask.numel() == lead[0]))
        if masked:
            keep = token_mask.to(rows.device).reshape(lead) != 0
        self.samples += n_samples
        rows = rows.reshape(-1, self.features)
        keep, sample = keep.reshape(-1), sample.reshape(-1)
        if self.held_out is not None:
            out = keep & (sample % HOLDOUT_EVERY == HOLDOUT_EVERY - 1)
            self.held_out._accumulate(rows[out])
            keep = keep & ~out
        self._accumulate(rows[keep])
        return masked

    def _accumulate(self, rows: torch.Tensor) -> None:
        rows = rows.to("cpu", torch.float64)
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

    def output_mse(self, error: torch.Tensor, bias_shift: torch.Tensor | None = None) -> float:
        """Mean squared output error E[|x E^T - bias_shift|^2] / M of a weight error E [M, K]
        (W - W_hat) and a bias change bias_shift [M] (b_hat - b) on these inputs."""
        error = error.to("cpu", torch.float64)
        total = float(((error @ self.gram) * error).sum())
        if bias_shift is not None:
            shift = bias_shift.to("cpu", torch.float64)
            total += float(shift @ shift) - 2 * float(self.mean @ error.T @ shift)
        return total / error.shape[0]

    def is_finite(self) -> bool:
        parts = [self] + ([self.held_out] if self.held_out is not None else [])
        return all(bool(torch.isfinite(p._sum).all() and torch.isfinite(p._gram).all()) for p in parts)

    def fingerprint(self) -> list[torch.Tensor]:
        """Tensors that identify these statistics (for cache keys), the held-out part included."""
        own = [self._gram, self._sum, torch.tensor([self.rows], dtype=torch.float64)]
        return own + (self.held_out.fingerprint() if self.held_out is not None else [])
