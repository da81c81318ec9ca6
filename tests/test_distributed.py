"""Quantisation shared out by torchrun (docs/SCALE.md): two gloo processes write the bytes one
process writes, both do part of the work, and a job killed half way resumes from the per-layer
cache without solving again what either rank had finished."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from bqq_deploy import quantize_weights
from bqq_deploy.errors import InputError
from bqq_deploy.quantize import distributed
from bqq_deploy.quantize.cache import LayerCache

import distributed_job

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "digits_vit.pt"
# digits_vit in batches of at most 16k padded weights: 13 batches to share out.
SETTINGS = ["--quality", "fast", "--seed", "0", "--batch-weights", "16384", "--no-validate", "-q"]


def torchrun(nproc: int, *args: str) -> subprocess.CompletedProcess:
    """torchrun on this machine (rendezvous on a free local port), gloo between the ranks."""
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           f"--nproc-per-node={nproc}", *args], capture_output=True, text=True,
                          timeout=240)


def test_two_ranks_write_the_bytes_one_process_writes(tmp_path):
    command = [sys.executable, "-m", "bqq_deploy.cli.export", str(MODEL), *SETTINGS]
    one = subprocess.run([*command, "-o", str(tmp_path / "one"), "--cache-dir", str(tmp_path / "c1")],
                         capture_output=True, text=True, timeout=240)
    assert one.returncode == 0, one.stderr[-2000:]
    two = torchrun(2, "--module", "bqq_deploy.cli.export", str(MODEL), *SETTINGS,
                   "-o", str(tmp_path / "two"), "--cache-dir", str(tmp_path / "c2"))
    assert two.returncode == 0, two.stderr[-3000:]
    assert ((tmp_path / "two" / "layers.bqq.safetensors").read_bytes()
            == (tmp_path / "one" / "layers.bqq.safetensors").read_bytes())
    report = json.loads((tmp_path / "two" / "report.json").read_text())
    ranks = [layer["solver"]["rank"] for layer in report["layers"]]
    assert set(ranks) == {0, 1} and min(ranks.count(0), ranks.count(1)) >= 5, ranks
    # rank 1 wrote nothing but its cache entries: one bundle, no temporaries beside it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c1", "c2", "one", "two"]


def test_a_killed_rank_loses_only_its_unfinished_layers(tmp_path):
    cache, job = tmp_path / "cache", str(Path(distributed_job.__file__))
    crashed = torchrun(2, job, str(cache), str(tmp_path / "crashed"), "--crash")
    assert crashed.returncode != 0
    finished = {p.name for p in cache.glob("*.bqq.safetensors")}
    # rank 0's first two batches and rank 1's first (distributed_job.crash_half_way)
    assert len(finished) == 3
    # Restarted as a new launch: torchrun's own --max-restarts does not get a gloo group
    # together again here (torch 2.13: "connectFullMesh failed ... Connection refused", even
    # for a two-line job), so a user reruns the command, as after any scheduler kill.
    rerun = torchrun(2, job, str(cache), str(tmp_path / "rerun"))
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    summaries = [json.loads((tmp_path / f"rerun.{rank}.json").read_text()) for rank in (0, 1)]
    assert summaries[0] == summaries[1]
    solved = {name for name, info in summaries[0].items() if not info["cache_hit"]}
    assert solved == {f"layer{i}" for i in range(3, 8)}  # nothing finished was solved again
    assert {summaries[0][name]["rank"] for name in solved} == {0, 1}
    # the resumed job's layers are the bytes of one uninterrupted process
    want = quantize_weights(distributed_job.layers(), distributed_job.CONFIG, progress=False)
    for name, weight in distributed_job.layers().items():
        got = LayerCache(cache).load(LayerCache.key(weight, distributed_job.CONFIG, None, None))
        for field in ("y_bits", "z_bits", "scales"):
            assert torch.equal(getattr(got, field), getattr(want[name], field)), (name, field)


def test_a_layer_larger_than_a_batch_is_solved_in_row_pieces(tmp_path, monkeypatch):
    """An embedding-sized layer never makes a batch larger than batch_weights: it is solved in
    pieces of whole block rows (each exactly what solving those rows alone gives, data-free
    blocks being independent), joined in order, and cached piece by piece and joined."""
    from bqq_deploy.quantize import driver

    config = replace(distributed_job.CONFIG, batch_weights=2 * 16 * 48)  # two block rows of 16 x 48
    gen = torch.Generator().manual_seed(1)
    weights = {"table": 0.02 * torch.randn(100, 48, generator=gen), "small": 0.02 * torch.randn(16, 48, generator=gen)}
    bias = torch.randn(100, generator=gen)
    sizes, solve = [], driver._solve_batch
    monkeypatch.setattr(driver, "_solve_batch", lambda batch, *a, **k: sizes.append(
        sum(w.shape[0] + -w.shape[0] % 16 for w in batch.values()) * 48) or solve(batch, *a, **k))
    out = quantize_weights(weights, config, biases={"table": bias}, cache_dir=tmp_path, progress=False)
    assert max(sizes) <= config.batch_weights and sum(sizes) == (112 + 16) * 48  # 100 rows padded to 112
    table = out["table"].validate()
    assert (table.out_features, table.in_features) == (100, 48) and table.info["pieces"] == 4
    assert torch.equal(table.bias, bias)
    alone = quantize_weights({"rows": weights["table"][32:64]}, config, progress=False)["rows"]
    for field in ("y_bits", "z_bits", "scales"):
        assert torch.equal(getattr(table, field)[:, 2:4], getattr(alone, field)), field
    # rerun: the joined layer comes from the cache, nothing is solved
    sizes.clear()
    again = quantize_weights(weights, config, biases={"table": bias}, cache_dir=tmp_path, progress=False)
    assert sizes == [] and again["table"].info["cache_hit"]
    assert torch.equal(again["table"].y_bits, table.y_bits)


def test_sharing_needs_a_cache_directory():
    with pytest.raises(InputError, match="cache directory"):
        distributed.solve_across_ranks([["a"]], {"a": "key"}, None, lambda share: iter(()))
