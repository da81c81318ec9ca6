"""Map ONNX weight initializers back to the torch parameters they came from (by content: the
exporter renames and pre-transposes weights), and run the "PyTorch BQQ model": the original
torch model with every quantised weight replaced by its dequantised W_hat."""

from __future__ import annotations

import hashlib
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

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
    """Shape and digest of array's float32 bytes (a digest, so the index of a large model's
    tensors does not hold a copy of them)."""
    array = np.ascontiguousarray(array, dtype=np.float32)
    return array.shape, hashlib.sha256(memoryview(array).cast("B")).digest()


def match_parameters(module: torch.nn.Module, candidates: list[Candidate]) -> dict[str, ParamMatch]:
    """{candidate.node: ParamMatch} for every candidate whose weight (and bias) equal a
    torch tensor of module bit for bit; candidates without a match are left out. A tensor
    under several names (tied weights) gives each ONNX weight a name of its own where one is
    left, that of the module the node was exported from first (a tied embedding and LM head
    exported as two tensors: `embed_tokens.weight` and `lm_head.weight`)."""
    index: dict[tuple, list[tuple[str, bool]]] = {}
    for name, tensor in module.state_dict().items():
        if not torch.is_floating_point(tensor) or tensor.ndim not in (1, 2):
            continue
        array = tensor.detach().float().cpu().numpy()
        index.setdefault(_key(array), []).append((name, False))
        if array.ndim == 2:
            index.setdefault(_key(array.T), []).append((name, True))
    shapes = {shape for shape, _ in index}
    matches, taken = {}, {}  # taken: state_dict key -> the ONNX weight named after it
    for cand in candidates:
        hits = index.get(_key(cand.weight)) if cand.shape in shapes else None
        if not hits:
            continue
        bias = None
        if cand.bias is not None:
            bias_hits = index.get(_key(cand.bias))
            if not bias_hits:
                continue
            bias = bias_hits[0][0]
        free = [(n, t) for n, t in hits if taken.get(n, cand.weight_name) == cand.weight_name]
        name, transposed = next((hit for hit in free if _owned_by(hit[0], cand.module)),
                                (free or hits)[0])
        taken.setdefault(name, cand.weight_name)
        matches[cand.node] = ParamMatch(name, transposed, bias)
    return matches


def _owned_by(parameter: str, module: str | None) -> bool:
    """Whether state_dict key parameter belongs to the module at path module (which may sit
    under a wrapper's prefix)."""
    owner = parameter.rpartition(".")[0]
    return bool(module and owner and (module == owner or module.endswith("." + owner)))


@contextmanager
def dequantised(module: torch.nn.Module, candidates: list[Candidate],
                weights: dict[str, BQQWeight], matches: dict[str, ParamMatch]) -> Iterator[torch.nn.Module]:
    """module with each matched weight set to W_hat and its bias to the quantiser's bias,
    in place (no copy of the model: one layer's W_hat at a time), for the duration of the
    block; every tensor it changed is put back bit for bit afterwards (from the candidate's
    weight, which equals it). Raises ValueError, before changing anything, if a candidate is
    unmatched, gained a bias the module has no tensor for, or shares its tensor with another
    layer (tied weights quantised twice cannot be one torch tensor)."""
    state = module.state_dict(keep_vars=True)
    owners: dict[int, str] = {}
    for cand in candidates:
        match = matches.get(cand.node)
        if match is None:
            raise ValueError(f"{cand.layer}: no torch parameter equals this ONNX weight")
        if weights[cand.layer].bias is not None and match.bias is None:
            raise ValueError(f"{cand.layer}: the quantiser added a bias the module lacks")
        storage = state[match.weight].untyped_storage().data_ptr()
        if owners.setdefault(storage, cand.layer) != cand.layer:
            raise ValueError(f"{cand.layer} and {owners[storage]} are one torch tensor")
    biases = {}
    done: list[Candidate] = []
    try:
        with torch.no_grad():
            for cand in candidates:
                match, weight = matches[cand.node], weights[cand.layer]
                if match.bias is not None and match.bias not in biases:
                    biases[match.bias] = state[match.bias].detach().clone()
                done.append(cand)
                w_hat = weight.dequantize()
                state[match.weight].copy_(w_hat.T if match.transposed else w_hat)
                if weight.bias is not None:
                    state[match.bias].copy_(weight.bias)
        yield module
    finally:
        with torch.no_grad():
            for cand in done:
                match = matches[cand.node]
                original = torch.from_numpy(cand.weight)
                state[match.weight].copy_(original.T if match.transposed else original)
            for name, bias in biases.items():
                state[name].copy_(bias)
