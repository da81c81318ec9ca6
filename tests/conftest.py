"""Shared test fixtures: random packed weights that follow docs/FORMAT.md exactly."""

from __future__ import annotations

import math

import pytest
import torch

from bqq_deploy.format import BQQWeight, pack_bits


def random_weight(M: int, K: int, g_r: int, g_c: int, rank: int, stacks: int, *,
                  bias: bool = True, seed: int = 0) -> BQQWeight:
    """A BQQWeight with uniformly random bits and N(0, 0.1) fp16 scales."""
    gen = torch.Generator().manual_seed(seed)
    R, C = math.ceil(M / g_r), math.ceil(K / g_c)
    y = torch.randint(0, 2, (stacks, R, C, g_r, rank), generator=gen)
    z = torch.randint(0, 2, (stacks, R, C, g_c, rank), generator=gen)
    scales = (0.1 * torch.randn(stacks, R, C, 4, generator=gen)).half()
    b = torch.randn(M, generator=gen) if bias else None
    return BQQWeight(M, K, g_r, g_c, rank, pack_bits(y), pack_bits(z), scales, b)


@pytest.fixture(autouse=True)
def _private_layer_cache(tmp_path_factory, monkeypatch):
    """bqq-export caches solved layers in the user's cache directory by default; tests use
    their own so they neither read a developer's cache nor leave files in it."""
    monkeypatch.setenv("BQQ_CACHE_DIR", str(tmp_path_factory.mktemp("bqq-cache")))


@pytest.fixture
def one_solver_thread():
    """torch on one thread for the test: tiny solver batches on two threads only spin, measured
    27x slower on a busy 2-core machine (the driver applies the same policy, driver._threads)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def make_weight():
    return random_weight
