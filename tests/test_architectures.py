"""Tiny `transformers` models of nine architectures, built from configs (no download), each
exported through bqq_deploy.export_model with every linear layer quantised, run in ONNX Runtime
and compared with the PyTorch model holding the same dequantised weights (W_hat from the
bundle's layers.bqq.safetensors, the quantiser's biases), at shapes other than the traced one.

Tolerance: max|ORT - torch| <= 1e-4 max|torch| per output. Both sides compute in fp32 from the
same bits and scales; only the summation order differs (ORT decodes W_hat then multiplies,
torch multiplies the dequantised weight), about 1e-7 relative per layer; two transformer
blocks with LayerNorm / softmax stay near 1e-6, so 1e-4 catches any wrong bit, scale, layout
or bias (those give errors of order 1) with room to spare. The table in docs/ARCHITECTURES.md
is what this file checks."""

from __future__ import annotations

import copy
import json

import numpy as np
import onnx
import pytest
import torch

transformers = pytest.importorskip("transformers")

from bqq_deploy import BQQConfig, export_model, runtime  # noqa: E402
from bqq_deploy.format import load_layers  # noqa: E402

PARITY = 1e-4
# "fast" preset, 16x16 blocks so that 32-wide layers are worth quantising.
CONFIG = BQQConfig.preset("fast", group_size=16)
SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)


ARCHITECTURES = {
    "bert": (lambda: transformers.BertModel(transformers.BertConfig(
        vocab_size=100, max_position_embeddings=64, **SMALL)), "text"),
    "vit": (lambda: transformers.ViTModel(transformers.ViTConfig(
        image_size=16, patch_size=4, **SMALL)), "image16"),
    "deit": (lambda: transformers.DeiTModel(transformers.DeiTConfig(
        image_size=16, patch_size=4, **SMALL)), "image16"),
    "swin": (lambda: transformers.SwinModel(transformers.SwinConfig(
        image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 2],
        window_size=4)), "image32"),
    "clip_vision": (lambda: transformers.CLIPVisionModel(transformers.CLIPVisionConfig(
        image_size=16, patch_size=4, **SMALL)), "image16"),
    "gpt2": (lambda: transformers.GPT2Model(transformers.GPT2Config(
        vocab_size=100, n_positions=64, n_embd=32, n_layer=2, n_head=2, use_cache=False)), "text"),
    "llama": (lambda: transformers.LlamaModel(transformers.LlamaConfig(
        vocab_size=100, max_position_embeddings=64, num_key_value_heads=1, use_cache=False,
        **SMALL)), "text"),
    "qwen2": (lambda: transformers.Qwen2Model(transformers.Qwen2Config(
        vocab_size=100, max_position_embeddings=64, num_key_value_heads=1, use_cache=False,
        **SMALL)), "text"),
    "t5_encoder": (lambda: transformers.T5EncoderModel(transformers.T5Config(
        vocab_size=100, d_model=32, d_kv=16, d_ff=64, num_layers=2, num_heads=2)), "text"),
}


def _inputs(kind: str, batch: int, seq: int, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    if kind == "text":
        ids = torch.randint(0, 100, (batch, seq), generator=gen)
        mask = torch.ones_like(ids)
        mask[0, seq - 2:] = 0  # a padded row: the mask is really used
        return {"input_ids": ids, "attention_mask": mask}
    size = int(kind.removeprefix("image"))
    return {"pixel_values": torch.randn(batch, 3, size, size, generator=gen)}


def _dynamic(kind: str) -> dict:
    if kind == "text":
        return {name: {0: "batch", 1: "seq"} for name in ("input_ids", "attention_mask")}
    return {"pixel_values": {0: "batch"}}


def _randomised(model: torch.nn.Module) -> torch.nn.Module:
    """Biases and norm shifts away from their zero init, as in a trained model."""
    torch.manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.normal_(0.0, 0.02)
    return model.eval()


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_architecture_exports_with_every_linear_quantised(arch, tmp_path):
    make, kind = ARCHITECTURES[arch]
    torch.manual_seed(0)
    model = _randomised(make())
    linears = {f"{name}.weight" for name, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) or type(m).__name__ == "Conv1D"}
    out = tmp_path / arch
    report = export_model(model, _inputs(kind, 2, 8, seed=0), out, config=CONFIG,
                          dynamic_shapes=_dynamic(kind))
    assert report.passed, report.verdict
    # every linear, and the embedding tables big enough to gain (docs/ONNX.md: BQQGather)
    assert {layer.layer for layer in report.layers if layer.onnx_op != "Gather"} == linears
    assert all(s.onnx_node.endswith("Gather") and s.reason.startswith("too small")
               for s in report.skipped), report.skipped

    # The PyTorch model with the bundle's dequantised weights, against model.onnx in ORT, at a
    # batch and sequence length other than the traced ones.
    reference = copy.deepcopy(model)
    state = reference.state_dict()
    conv1d = {f"{n}.weight" for n, m in reference.named_modules() if type(m).__name__ == "Conv1D"}
    with torch.no_grad():
        for name, weight in load_layers(out / "layers.bqq.safetensors").items():
            w_hat = weight.dequantize()
            state[name].copy_(w_hat.T if name in conv1d else w_hat)  # GPT-2's Conv1D: [in, out]
            if weight.bias is not None:
                state[name.removesuffix("weight") + "bias"].copy_(weight.bias)
    feeds = _inputs(kind, 3, 5 if kind == "text" else 0, seed=1)
    with torch.no_grad():
        expected = reference(**feeds)
    backend = runtime.load(out / "model.onnx", backend="onnxruntime", providers=["CPUExecutionProvider"])
    outputs = backend.run({k: v.numpy() for k, v in feeds.items()})
    assert list(outputs)[0] == "last_hidden_state"
    for name, got in outputs.items():
        want = expected[name].numpy()
        assert got.shape == want.shape, name
        rel = float(np.abs(got - want).max() / np.abs(want).max())
        assert rel <= PARITY, (name, rel)
    # in the TensorRT file every linear is a BQQMatMul node; no float MatMul / Gemm with a
    # constant weight is left
    graph = onnx.load(str(out / "model.trt.onnx"), load_external_data=False).graph
    constants = {i.name for i in graph.initializer}
    assert not [n.name for n in graph.node if n.op_type in ("MatMul", "Gemm") and n.input[1] in constants]
    assert sum(n.op_type == "BQQMatMul" for n in graph.node) == len(linears)
    assert json.loads((out / "report.json").read_text())["verdict"]["status"] == "PASSED"
