"""Calibration capture on torch modules (quantize_model's front end): the model run on the
user's calibration batches with forward hooks feeding each linear's input rows, padding
masked, into InputStatistics; the linears grouped by the tensor they read; the capture of
one group at a time (sequential calibration), stopped as soon as that group has its rows.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import InputError
from .calibration import InputStatistics


@dataclass
class Batch:
    """One call of the model: positional and keyword arguments, and the token mask of its
    samples (None: every position is data)."""

    args: tuple
    kwargs: dict
    mask: torch.Tensor | None


class CalibrationData:
    """calib_inputs of quantize_model as batches. A tensor is one positional argument, a
    tuple the positional arguments, a dict the keyword arguments of one call; a list is
    several such calls. The token mask of a batch is calib_mask (one per batch for a list)
    or else the argument bound to the forward parameter named attention_mask, if any."""

    def __init__(self, model: nn.Module, calib_inputs, calib_mask=None):
        items = calib_inputs if isinstance(calib_inputs, list) else [calib_inputs]
        masks = calib_mask if isinstance(calib_mask, list) else [calib_mask] * len(items)
        if len(masks) != len(items):
            raise InputError(f"calib_mask: {len(masks)} masks for {len(items)} calibration batches")
        try:
            signature = inspect.signature(model.forward)
        except (TypeError, ValueError):
            signature = None
        self.batches = []
        self.mask_source = None
        for item, mask in zip(items, masks):
            args, kwargs = (((), dict(item)) if isinstance(item, dict)
                            else (item if isinstance(item, tuple) else (item,), {}))
            source = "calib_mask" if mask is not None else None
            if mask is None and signature is not None:
                try:
                    mask = signature.bind_partial(*args, **kwargs).arguments.get("attention_mask")
                except TypeError:
                    mask = kwargs.get("attention_mask")
                source = "attention_mask" if isinstance(mask, torch.Tensor) else None
            self.batches.append(Batch(args, kwargs, mask if isinstance(mask, torch.Tensor) else None))
            self.mask_source = self.mask_source or source
        self.samples = sum(_samples(b) for b in self.batches)

    def run(self, model: nn.Module, batch: Batch):
        with torch.no_grad():
            return model(*batch.args, **batch.kwargs)


def _samples(batch: Batch) -> int:
    if batch.mask is not None:
        return int(batch.mask.shape[0])
    first = next((a for a in list(batch.args) + list(batch.kwargs.values()) if isinstance(a, torch.Tensor)), None)
    return int(first.shape[0]) if first is not None and first.dim() else 1


class _Stop(Exception):
    """Raised by a hook to end a capture forward once every layer of interest has run."""


def input_groups(model: nn.Module, names: list[str], data: CalibrationData) -> list[list[str]]:
    """The named linears in the order the model first calls them, grouped when consecutive
    calls read the very same tensor (BERT: query, key, value): the unit of sequential
    calibration, and layers that share one metric. Linears the calibration batches never
    call are left out."""
    modules = dict(model.named_modules())
    groups: list[list[str]] = []
    seen: set[str] = set()
    last = [None]  # the last input tensor, held so its id cannot be reused meanwhile

    def pre_hook(_module, args, name):
        if name not in seen:
            seen.add(name)
            if groups and last[0] is not None and args[0] is last[0]:
                groups[-1].append(name)
            else:
                groups.append([name])
        last[0] = args[0]

    handles = [modules[n].register_forward_pre_hook(lambda m, a, n=n: pre_hook(m, a, n)) for n in names]
    try:
        data.run(model, data.batches[0])
    finally:
        for handle in handles:
            handle.remove()
    return groups


def capture(model: nn.Module, groups: list[list[str]], data: CalibrationData, holdout: bool,
            stop: bool = False) -> tuple[dict[str, InputStatistics], list[str]]:
    """Input statistics of the groups' linears over all calibration batches (the layers of a
    group share one InputStatistics). stop: end each forward once the last group has run
    (its outputs are not needed). Returns the statistics and the layers whose rows did not
    match the batch's token mask (their padding could not be dropped)."""
    modules = dict(model.named_modules())
    stats, unmasked = {}, set()
    batch_mask = [None]
    last = groups[-1][-1] if groups else None

    def pre_hook(_module, args, group):
        applied = stats[group[0]].add(args[0], batch_mask[0])
        if batch_mask[0] is not None and not applied:
            unmasked.update(group)

    def stop_hook(_module, _args, _out):
        raise _Stop

    handles = []
    for group in groups:
        shared = InputStatistics(modules[group[0]].in_features, holdout=holdout)
        stats.update({n: shared for n in group})
        handles.append(modules[group[0]].register_forward_pre_hook(lambda m, a, g=group: pre_hook(m, a, g)))
    if stop and last is not None:
        handles.append(modules[last].register_forward_hook(stop_hook))
    try:
        for batch in data.batches:
            batch_mask[0] = batch.mask
            try:
                data.run(model, batch)
            except _Stop:
                pass
    finally:
        for handle in handles:
            handle.remove()
    return {n: s for n, s in stats.items() if s.rows}, sorted(unmasked)


def output_error(model: nn.Module, data: CalibrationData, reference: list[torch.Tensor]) -> float:
    """Relative squared error of the model's first output tensor against `reference` (one
    per batch, from reference_outputs), over real positions only."""
    num = den = 0.0
    for batch, ref in zip(data.batches, reference):
        out = first_tensor(data.run(model, batch)).float()
        weight = _position_weights(batch, ref)
        num += float((((out - ref) ** 2).sum(-1) * weight).sum())
        den += float(((ref ** 2).sum(-1) * weight).sum())
    return num / max(den, 1e-30)


def reference_outputs(model: nn.Module, data: CalibrationData) -> list[torch.Tensor]:
    return [first_tensor(data.run(model, b)).float() for b in data.batches]


def _position_weights(batch: Batch, out: torch.Tensor) -> torch.Tensor:
    lead = out.shape[:-1]
    if batch.mask is not None and tuple(batch.mask.shape) == tuple(lead):
        return (batch.mask != 0).float()
    return torch.ones(lead)


def first_tensor(output) -> torch.Tensor:
    """The first tensor of a model output (a tensor, a tuple / list, a dict or a
    transformers ModelOutput)."""
    if isinstance(output, torch.Tensor):
        return output
    values = output.values() if isinstance(output, dict) else output if isinstance(output, (tuple, list)) else ()
    for value in values:
        if isinstance(value, torch.Tensor):
            return value
    raise InputError(f"the model returned {type(output).__name__} with no tensor: the bit budget "
                     "measures the first output tensor")
