"""Quantisation spread over the processes of a torch.distributed job (torchrun): the solver
batches are formed exactly as one process forms them, rank 0 says which are not finished yet
(not every layer in the per-layer cache), those are dealt to the ranks by index, each rank
solves its share and stores every finished layer in the cache, and after a barrier each rank
reads the whole result from the cache. The cache directory is the only thing ranks share
besides a few small messages, so it must be one directory for all of them (a shared file
system across hosts). torchrun starts, places and restarts the processes: a rank that dies
loses only the batch it was solving, and the restarted job finds the rest in the cache.

Results are byte-identical to one process with the same seed: every batch is the same set
of blocks, and the solver seeds its generator per batch. The group uses gloo for the few
messages (on CPU tensors) and, where CUDA is available, NCCL for CUDA tensors; each rank
solves on its local GPU (LOCAL_RANK) when the config's device is "auto" or "cuda"."""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Callable, Iterable

import torch

from ..errors import InputError
from ..format import BQQWeight
from .cache import LayerCache

# A rank waits at the barrier for the slowest rank's whole share (hours for a large model).
# torchrun stops every rank when one fails, so a long wait cannot outlive a failed job.
WAIT = timedelta(days=2)

_owned = False  # this module created the process group (and so destroys it in shutdown)


def world_size() -> int:
    """Processes in the job: the initialised group's size, else torchrun's WORLD_SIZE, else 1."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return int(os.environ.get("RANK", "0"))


def is_writer() -> bool:
    """Whether this process writes the results (rank 0; the only process of a plain run)."""
    return rank() == 0


def setup() -> bool:
    """Join the job torchrun started (its RANK, WORLD_SIZE, MASTER_ADDR / MASTER_PORT) unless a
    process group exists already; pins this process to GPU LOCAL_RANK where CUDA is available.
    Returns whether the job has more than one process."""
    global _owned
    if world_size() <= 1:
        return False
    if not torch.distributed.is_available():
        raise InputError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    if not torch.distributed.is_initialized():
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
        torch.distributed.init_process_group("cpu:gloo,cuda:nccl" if cuda else "gloo", timeout=WAIT)
        _owned = True
    return True


def shutdown() -> None:
    """Leave the group setup() created (a group the caller made is the caller's)."""
    global _owned
    if _owned and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    _owned = False


def _broadcast(value):
    """value from rank 0, on every rank (over gloo: CPU tensors only)."""
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0, device=torch.device("cpu"))
    return box[0]


def _barrier() -> None:
    # An all-reduce of a CPU tensor goes through gloo whatever else the group has.
    torch.distributed.all_reduce(torch.zeros(1))


def solve_across_ranks(batches: list[list[str]], keys: dict[str, str], cache: LayerCache | None,
                       solve: Callable[[list[list[str]]], Iterable[dict[str, BQQWeight]]]
                       ) -> dict[str, BQQWeight]:
    """Every layer of batches (each layer's cache key in keys), solved by this job's ranks.

    solve(share) solves the batches of this rank's share in order, yielding each one's
    layers; this stores them in the cache. Every rank returns every layer, read back from the
    cache; those solved in this run have info["cache_hit"] False and info["rank"] the rank
    that solved them."""
    if cache is None:
        raise InputError("a torch.distributed run needs a solver cache directory that every "
                         "rank can read (--cache-dir, cache_dir=): the ranks hand their layers "
                         "over through it")
    me, ranks = rank(), world_size()
    todo = None
    if me == 0:
        todo = [i for i, batch in enumerate(batches)
                if any(cache.load(keys[name]) is None for name in batch)]
    # Rank 0's keys too: calibration statistics computed on other hardware may differ in the
    # last bits, and the layers must still meet under one name.
    todo, keys = _broadcast((todo, keys))
    for solved in solve([batches[i] for i in todo[me::ranks]]):
        for name, packed in solved.items():
            packed.info.update(cache_hit=False, rank=me)
            cache.store(keys[name], packed)
    _barrier()
    fresh = {name for i in todo for name in batches[i]}
    results = {}
    for batch in batches:
        for name in batch:
            packed = cache.load(keys[name])
            if packed is None:
                raise InputError(f"{name}: not in the solver cache {cache.directory} after every "
                                 "rank finished: the ranks must share one cache directory")
            packed.info["cache_hit"] = name not in fresh
            results[name] = packed
    return results
