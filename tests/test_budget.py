"""The bit budget (bits=2.5: an average over layers) through allocate, quantize_model and
bqq-export. Small problems, seconds each."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from torch import nn

from bqq_deploy import BQQConfig, quantize_model, quantize_weights
from bqq_deploy.cli.export import main
from bqq_deploy.errors import InputError
from bqq_deploy.quantize.budget import allocate
from test_export import linear_onnx

FAST = dict(group_size=16, steps=40, flip_rounds=10, seed=0, device="cpu")

pytestmark = pytest.mark.usefixtures("one_solver_thread")


def test_allocate_spends_the_average_on_the_largest_drop_per_weight():
    sizes = {"a": 100, "b": 100, "c": 200, "d": 100}
    drops = {"a": 1.0, "b": 0.1, "c": 1.0, "d": -0.5}
    # 0.5 extra stacks x 500 weights = 250 weights may get a third stack: a (0.01 per
    # weight) first; c (0.005) does not fit in the 150 left, b (0.001) does; d never (no gain).
    chosen = allocate(sizes, drops, 2.5, 2, 3)
    assert chosen == {"a": 3, "b": 3, "c": 2, "d": 2}
    assert sum(chosen[n] * sizes[n] for n in sizes) / sum(sizes.values()) <= 2.5
    assert allocate(sizes, drops, 2.0, 2, 2) == dict.fromkeys(sizes, 2)


class TwoHeads(nn.Module):
    """Two equal linears on one input; the output weighs the first 10x, so its error
    counts 100x: the extra stack must go there."""

    def __init__(self):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.loud = nn.Linear(32, 32)
        self.quiet = nn.Linear(32, 32)
        with torch.no_grad():
            for layer in (self.loud, self.quiet):
                layer.weight.copy_(torch.randn(32, 32, generator=gen))

    def forward(self, x):
        return 10 * self.loud(x) + self.quiet(x)


def test_quantize_model_gives_the_extra_stack_where_the_output_error_drops_most(caplog):
    model = TwoHeads()
    x = torch.randn(256, 32, generator=torch.Generator().manual_seed(1))
    with caplog.at_level(logging.INFO, logger="bqq_deploy"):
        report = quantize_model(model, BQQConfig(bits=2.5, **FAST), calib_inputs=x, progress=False)
    assert report.weights["loud"].stacks == 3 and report.weights["quiet"].stacks == 2
    summary = report.to_dict()
    assert summary["stacks"] == {"2": 1, "3": 1} and summary["mean_stacks"] == 2.5
    assert "1 x 2 stacks, 1 x 3 stacks" in report.to_markdown()
    assert "bit budget 2.5 stacks: 1 layer(s) with 2, 1 with 3 (2.500 stacks per weight); 3 stacks: loud" \
        in caplog.text


def test_an_average_without_calibration_is_a_clear_error():
    with pytest.raises(InputError, match="bits=2.5 is an average over layers: it needs calibration"):
        quantize_weights({"w": torch.randn(16, 16)}, BQQConfig(bits=2.5, **FAST), progress=False)


def test_bqq_export_bits_average_reports_the_mix(tmp_path):
    path = tmp_path / "mlp.onnx"
    linear_onnx(path)  # three linears: 48->40, 40->40, 40->16
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(0).standard_normal((128, 48)).astype(np.float32))
    out = tmp_path / "out"
    assert main([str(path), "-o", str(out), "--quality", "fast", "--bits", "2.5", "--group-size", "16",
                 "--no-validate", "-q", "--calib", str(tmp_path / "calib.npz")]) == 0
    layers = json.loads((out / "report.json").read_text())["layers"]
    stacks = {layer["layer"]: layer["stacks"] for layer in layers}
    sizes = {layer["layer"]: layer["shape"][0] * layer["shape"][1] for layer in layers}
    assert sorted(set(stacks.values())) == [2, 3]
    assert sum(stacks[n] * sizes[n] for n in stacks) / sum(sizes.values()) <= 2.5
    assert "(per layer below" in (out / "report.md").read_text()
