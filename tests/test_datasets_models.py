"""The digits split, the DigitsViT definition and the bundled TorchScript demo model."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("sklearn", reason="the digits data set ships with scikit-learn")

from bqq_deploy.datasets import digits_split  # noqa: E402
from bqq_deploy.models import DigitsViT, build_model, load_trained  # noqa: E402

MODEL = Path(__file__).resolve().parents[1] / "models" / "digits_vit.pt"


def test_digits_split_sizes_types_and_stratification():
    x_train, y_train, x_test, y_test = digits_split()
    assert x_train.shape == (1347, 1, 8, 8) and x_test.shape == (450, 1, 8, 8)
    assert x_train.dtype == np.float32 and y_train.dtype == np.int64
    assert 0.0 <= x_train.min() and x_train.max() <= 1.0 and x_train.max() == 1.0
    # Every class is held out in proportion (25% of 174..183 images each, rounded).
    counts = np.bincount(y_test, minlength=10)
    assert counts.min() >= 43 and counts.max() <= 46


def test_digits_split_is_deterministic_and_disjoint():
    first, again, other = digits_split(0), digits_split(0), digits_split(1)
    for a, b in zip(first, again):
        assert np.array_equal(a, b)
    assert not np.array_equal(first[2], other[2])
    # The 1797 digits images are pairwise distinct, so disjoint contents = disjoint split.
    train = {img.tobytes() for img in first[0]}
    test = {img.tobytes() for img in first[2]}
    assert len(train) == 1347 and len(test) == 450 and not train & test


def test_digits_split_rejects_bad_fraction():
    with pytest.raises(ValueError, match="test_fraction"):
        digits_split(test_fraction=1.5)


def test_digits_vit_shapes_and_quantisable_linears():
    torch.manual_seed(0)
    model = build_model("digits_vit").eval()
    for batch in (1, 5):
        assert model(torch.rand(batch, 1, 8, 8)).shape == (batch, 10)
    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    assert len(linears) == 4 * 6 + 1  # q, k, v, proj, fc1, fc2 per block + head
    assert all(m.in_features >= 64 for m in linears.values())  # one 64-wide group at least
    assert not any(isinstance(m, nn.MultiheadAttention) for m in model.modules())
    with pytest.raises(ValueError, match="unknown model"):
        build_model("nope")
    with pytest.raises(ValueError, match="divisible"):
        DigitsViT(dim=64, heads=5)


def test_bundled_model_reaches_recorded_accuracy():
    meta = json.loads(MODEL.with_suffix(".json").read_text())
    assert meta["input"]["shape"] == ["batch", 1, 8, 8] and meta["classes"] == list(range(10))
    scripted = torch.jit.load(str(MODEL))
    _, _, x_test, y_test = (torch.from_numpy(a) for a in digits_split(seed=0))
    with torch.no_grad():
        logits = scripted(x_test)
    acc = float((logits.argmax(-1) == y_test).float().mean())
    assert acc >= 0.95
    # Another CPU may sum in a different order; allow one borderline image to flip.
    assert abs(acc - meta["held_out_accuracy"]) <= 1 / len(y_test) + 1e-9
    eager, _ = load_trained(MODEL)
    with torch.no_grad():
        # Same weights, same ops: only kernel-order differences (fp32, logits of size ~5).
        torch.testing.assert_close(eager(x_test), logits, rtol=1e-5, atol=1e-5)
    assert MODEL.stat().st_size < 2 * 2**20


def test_bundled_model_exports_to_onnx(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    scripted = torch.jit.load(str(MODEL))
    path = tmp_path / "digits_vit.onnx"
    # The TorchScript exporter (dynamo=False) takes a ScriptModule; the dynamo one does not.
    torch.onnx.export(scripted, (torch.rand(2, 1, 8, 8),), str(path), input_names=["image"],
                      output_names=["logits"], dynamic_axes={"image": {0: "batch"}},
                      opset_version=17, dynamo=False)
    x = torch.rand(7, 1, 8, 8)
    out = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"image": x.numpy()})[0]
    with torch.no_grad():
        ref = scripted(x).numpy()
    # fp32 in both; ORT fuses/reorders (LayerNorm, GELU via Erf): ~1e-6 observed.
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)
