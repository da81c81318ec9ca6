"""Model definitions for the bundled demo models: small vision transformers on the 8x8
scikit-learn digits. Every projection (q, k, v, attention output, MLP, head) is an
nn.Linear, so the BQQ quantiser can replace each of them; the patch embedding is a
convolution and stays in floating point."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import nn

# Named configurations. "digits_vit" is the bundled default (small, trains in about a
# minute on 2 cores); "digits_vit_large" is the few-million-parameter model the quality
# benchmark uses to test BQQ on larger trained matrices.
MODEL_CONFIGS: dict[str, dict] = {
    "digits_vit": dict(dim=64, depth=4, heads=4, mlp_ratio=2, patch=2),
    "digits_vit_large": dict(dim=192, depth=6, heads=6, mlp_ratio=4, patch=4),
}


class Attention(nn.Module):
    """Multi-head self-attention with separate q/k/v/proj nn.Linear layers (no fused
    nn.MultiheadAttention, whose packed in_proj weight the quantiser could not see)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.head_dim = dim // heads
        self.scale = 1.0 / math.sqrt(self.head_dim)
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.reshape(b, n, self.heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self._split(self.q(x)), self._split(self.k(x)), self._split(self.v(x))
        attn = torch.softmax((q @ k.transpose(-2, -1)) * self.scale, dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, mlp_ratio * dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(mlp_ratio * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(self.act(self.fc1(self.norm2(x))))


class DigitsViT(nn.Module):
    """Vision transformer for [B, 1, 8, 8] images: conv patch embedding, class token,
    learned position embedding, pre-LN blocks, final LayerNorm, linear head on the class
    token. Returns logits [B, num_classes]."""

    def __init__(self, dim: int = 64, depth: int = 4, heads: int = 4, mlp_ratio: int = 2,
                 patch: int = 2, image_size: int = 8, num_classes: int = 10):
        super().__init__()
        if image_size % patch:
            raise ValueError(f"image_size {image_size} is not a multiple of patch {patch}")
        tokens = (image_size // patch) ** 2
        self.patch_embed = nn.Conv2d(1, dim, kernel_size=patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, tokens + 1, dim) * 0.02)
        self.blocks = nn.ModuleList([Block(dim, heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        # ViT/BERT initialisation (truncated normal, std 0.02). PyTorch's default uniform init
        # survives training on a data set this small: the weights stayed near-uniform
        # (kurtosis ~2), unlike any pretrained transformer a user would quantise.
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # [B, tokens, dim]
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x)[:, 0])


def build_model(name: str = "digits_vit") -> DigitsViT:
    """A freshly initialised model of a named configuration (see MODEL_CONFIGS)."""
    if name not in MODEL_CONFIGS:
        raise ValueError(f"unknown model {name!r}; known: {sorted(MODEL_CONFIGS)}")
    return DigitsViT(**MODEL_CONFIGS[name])


def load_trained(path: str | Path) -> tuple[DigitsViT, dict]:
    """An eager DigitsViT (every nn.Linear visible for quantisation and hooks) with the
    weights of a TorchScript file written by models/train_digits_vit.py, and the metadata
    of the .json file beside it."""
    path = Path(path)
    meta_path = path.with_suffix(".json")
    if not path.is_file() or not meta_path.is_file():
        raise FileNotFoundError(f"need both {path} and {meta_path} "
                                "(python models/train_digits_vit.py writes them)")
    meta = json.loads(meta_path.read_text())
    model = DigitsViT(**meta["config"])
    model.load_state_dict(torch.jit.load(str(path), map_location="cpu").state_dict())
    return model.eval(), meta
