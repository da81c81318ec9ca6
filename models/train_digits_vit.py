"""Train a DigitsViT on the scikit-learn digits and save it as TorchScript + JSON metadata.

    python models/train_digits_vit.py                          # bundled default model
    python models/train_digits_vit.py --model digits_vit_large # quality-benchmark model

Deterministic for a given seed and thread count (CPU). Writes <out-dir>/<model>.pt
(torch.jit.script, loadable with torch.jit.load and exportable with torch.onnx.export) and
<out-dir>/<model>.json (input/output names, shape, dtype, classes, held-out accuracy,
training settings).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import platform
import sys
import time
from pathlib import Path

import torch
from torch import nn

from bqq_deploy.datasets import DIGITS_TEST_FRACTION, digits_split
from bqq_deploy.atomic import atomic_write_bytes
from bqq_deploy.models import MODEL_CONFIGS, build_model

DEFAULTS = {  # per model: epochs, peak learning rate
    "digits_vit": dict(epochs=120, lr=1e-3),
    "digits_vit_large": dict(epochs=15, lr=1e-3),
}


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 512) -> float:
    model.eval()
    correct = sum(int((model(xb).argmax(-1) == yb).sum())
                  for xb, yb in zip(x.split(batch), y.split(batch)))
    return correct / len(y)


def train(name: str, epochs: int, lr: float, batch_size: int, seed: int) -> tuple[nn.Module, dict]:
    torch.manual_seed(seed)
    x_train, y_train, x_test, y_test = (torch.from_numpy(a) for a in digits_split(seed=0))
    model = build_model(name)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    steps_per_epoch = math.ceil(len(y_train) / batch_size)
    total, warmup = epochs * steps_per_epoch, steps_per_epoch * 2
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(
        (step + 1) / warmup, 0.5 * (1 + math.cos(math.pi * min(step / total, 1.0)))))
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)
    generator = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(y_train), generator=generator)
        for idx in order.split(batch_size):
            loss = loss_fn(model(x_train[idx]), y_train[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
        if (epoch + 1) % 5 == 0 or epoch + 1 == epochs:
            print(f"epoch {epoch + 1}/{epochs}  loss {loss.item():.4f}  "
                  f"held-out acc {accuracy(model, x_test, y_test):.4f}  "
                  f"{time.perf_counter() - start:.0f}s", flush=True)
    seconds = time.perf_counter() - start
    model.eval()
    meta = {
        "model": name,
        "config": MODEL_CONFIGS[name],
        "parameters": sum(p.numel() for p in model.parameters()),
        "input": {"name": "image", "shape": ["batch", 1, 8, 8], "dtype": "float32",
                  "range": [0.0, 1.0]},
        "output": {"name": "logits", "shape": ["batch", 10], "dtype": "float32"},
        "classes": list(range(10)),
        "dataset": {"name": "sklearn.datasets.load_digits",
                    "split": f"bqq_deploy.datasets.digits_split(seed=0), stratified, "
                             f"{DIGITS_TEST_FRACTION:.0%} held out",
                    "train": len(y_train), "test": len(y_test)},
        "held_out_accuracy": accuracy(model, x_test, y_test),
        "training": {"epochs": epochs, "lr": lr, "batch_size": batch_size, "seed": seed,
                     "optimizer": "AdamW(weight_decay=0.05), warmup 2 epochs + cosine",
                     "loss": "cross entropy, label smoothing 0.1",
                     "seconds": round(seconds, 1), "threads": torch.get_num_threads(),
                     "torch": torch.__version__, "machine": platform.processor() or platform.machine()},
    }
    return model, meta


def save(model: nn.Module, meta: dict, out_dir: Path) -> Path:
    """Write <model>.pt (TorchScript) and <model>.json atomically; return the .pt path."""
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(model), buffer)
    pt_path = out_dir / f"{meta['model']}.pt"
    atomic_write_bytes(pt_path, [buffer.getvalue()])
    atomic_write_bytes(out_dir / f"{meta['model']}.json",
                       [json.dumps(meta, indent=2).encode() + b"\n"])
    return pt_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="digits_vit", choices=sorted(MODEL_CONFIGS))
    parser.add_argument("--epochs", type=int, help="default depends on --model")
    parser.add_argument("--lr", type=float, help="peak learning rate; default depends on --model")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads; results are reproducible for a fixed count "
                             "(1 is also the fastest for these small matrices on 2 cores)")
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    defaults = DEFAULTS[args.model]
    model, meta = train(args.model, args.epochs or defaults["epochs"], args.lr or defaults["lr"],
                        args.batch_size, args.seed)
    path = save(model, meta, args.out_dir)
    print(f"held-out accuracy {meta['held_out_accuracy']:.4f}, "
          f"{meta['training']['seconds']:.0f}s training -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
