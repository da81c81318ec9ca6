"""A quantize_weights job for torchrun, used by tests/test_distributed.py:

    torchrun --standalone --nproc-per-node 2 tests/distributed_job.py CACHE RESULT [--crash]

Each rank quantises LAYERS (one solver batch per layer, so the ranks share eight batches)
with CACHE as the solver cache and writes RESULT.<rank>.json: per layer, whether it came
from the cache and which rank solved it. With --crash the job dies half way at a fixed point:
rank 0 finishes two of its batches and then waits, rank 1 finishes one and, once rank 0's
two are in the cache, kills itself (SIGKILL) inside its second; torchrun then stops rank 0.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import torch

from bqq_deploy import BQQConfig, quantize_weights
from bqq_deploy.quantize import driver

# Every layer exactly one batch: 64 x 48 = 3072 padded weights (a larger layer would be solved
# in row pieces, a smaller pair would share a batch).
CONFIG = BQQConfig.preset("fast", group_size=16, steps=20, flip_rounds=5, batch_weights=64 * 48)


def layers() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {f"layer{i}": 0.02 * torch.randn(64, 48, generator=gen) for i in range(8)}


def crash_half_way(cache: Path) -> None:
    """Make driver._solve_batch stop the job at the fixed point of the module docstring."""
    rank, solve = int(os.environ["RANK"]), driver._solve_batch
    calls = []

    def cached() -> int:
        return len(list(cache.glob("*.bqq.safetensors")))

    def wrapped(*args, **kwargs):
        calls.append(1)
        if rank == 0 and len(calls) == 3:
            while True:  # torchrun ends this process when rank 1 dies
                time.sleep(0.05)
        if rank == 1 and len(calls) == 2:
            while cached() < 3:  # rank 1's first batch and rank 0's first two are stored
                time.sleep(0.01)
            os.kill(os.getpid(), signal.SIGKILL)
        return solve(*args, **kwargs)

    driver._solve_batch = wrapped


def main() -> None:
    cache, result = Path(sys.argv[1]), Path(sys.argv[2])
    if "--crash" in sys.argv[3:]:
        crash_half_way(cache)
    out = quantize_weights(layers(), CONFIG, cache_dir=cache, progress=False)
    rank = int(os.environ["RANK"])
    summary = {name: {"cache_hit": w.info["cache_hit"], "rank": w.info.get("rank")}
               for name, w in out.items()}
    Path(f"{result}.{rank}.json").write_text(json.dumps(summary))


if __name__ == "__main__":
    main()
