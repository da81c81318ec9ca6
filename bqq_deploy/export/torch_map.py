"""Map ONNX weight initializers back to the torch parameters they came from (by content: the
exporter renames and pre-transposes weights), and build the "PyTorch BQQ model": the original
torch model with every quantised weight replaced by its dequantised W_hat."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..format import BQQWeight
from .surgery import Candidate


@dataclass(frozen=True)
class ParamMatch:
    weight: str  # state_dict key holding W ([M, K]) or W^T
    transposed: bool  # the torch tensor is W^T
    bias: str | None  # state_dict key of the bias, when the layer has one


def _key(array: np.ndarray) -> tuple:
    array = np.ascontiguousarray(array, dtype=np.float32)
    return array.shape, array.tobytes()


def match_parameters(module: torch.nn.Module, candidates: list[Candidate]) -> dict[str, ParamMatch]:
    """{candidate.node: ParamMatch} for every candidate whose weight (and bias) equal a
    torch tensor of module bit for bit; candidates without a match are left out."""
    index: dict[tuple, tuple[str, bool]] = {}
    for name, tensor in module.state_dict().items():
        if not torch.is_floating_point(tensor) or tensor.ndim not in (1, 2):
            continue
        array = tensor.detach().float().cpu().numpy()
        index.setdefault(_key(array), (name, False))
        if array.ndim == 2:
            index.setdefault(_key(array.T), (name, True))
    matches = {}
    for cand in candidates:
        hit = index.get(_key(cand.weight))
        if hit is None:
            continue
        bias = None
        if cand.bias is not None:
            bias_hit = index.get(_key(cand.bias))
            if bias_hit is None:
                continue
            bias = bias_hit[0]
        matches[cand.node] = ParamMatch(hit[0], hit[1], bias)
    return matches


def bqq_torch_model(module: torch.nn.Module, candidates: list[Candidate],
                    weights: dict[str, BQQWeight], matches: dict[str, ParamMatch]) -> torch.nn.Module:
    """module (a fresh copy: it is modified in place) with each matched weight set to W_hat
    and its bias to the quantiser's bias. Raises ValueError if a candidate is unmatched or
    gained a bias the module has no tensor for."""
    state = module.state_dict(keep_vars=True)
    with torch.no_grad():
        for cand in candidates:
            match = matches.get(cand.node)
            if match is None:
                raise ValueError(f"{cand.layer}: no torch parameter equals this ONNX weight")
            weight = weights[cand.layer]
            w_hat = weight.dequantize()
            state[match.weight].copy_(w_hat.T if match.transposed else w_hat)
            if weight.bias is not None:
                if match.bias is None:
                    raise ValueError(f"{cand.layer}: the quantiser added a bias the module lacks")
                state[match.bias].copy_(weight.bias)
    return module
