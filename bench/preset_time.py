"""Wall time of each preset on a model-sized set of weights (issue: "the default preset
quantises a 10-million-weight model in <= 10 minutes on a 2-core CPU").

The weights are the linear layers of one BERT-base encoder layer plus a second layer's
attention and MLP up-projection (4 x 768x768, 3072x768, 768x3072, 4 x 768x768, 3072x768:
11.80M weights), drawn
N(0, 0.02^2) like a transformer's initialisation. Appends a table to
bench/results/preset_time.md with the machine named.

    python bench/preset_time.py --presets balanced --bits 2 3
"""

from __future__ import annotations

import argparse
import time
from datetime import datetime, timezone

import torch

from matrix_compression import append_result, machine_summary, markdown_table

from bqq_deploy import BQQConfig, quantize_weights

HIDDEN, FFN = 768, 3072


def encoder_weights(seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    shapes = {f"layer0.attn.{n}": (HIDDEN, HIDDEN) for n in "qkvo"}
    shapes.update({"layer0.ffn.up": (FFN, HIDDEN), "layer0.ffn.down": (HIDDEN, FFN)})
    shapes.update({f"layer1.attn.{n}": (HIDDEN, HIDDEN) for n in "qkvo"})
    shapes["layer1.ffn.up"] = (FFN, HIDDEN)
    return {name: 0.02 * torch.randn(*shape, generator=gen) for name, shape in shapes.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", nargs="+", default=["fast", "balanced"])
    parser.add_argument("--bits", nargs="+", type=int, default=[2, 3])
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    weights = encoder_weights()
    total = sum(w.numel() for w in weights.values())
    header = ["preset", "bits", "weights", "wall s", "s / M weights", "weight MSE / Var(W)"]
    rows = []
    for preset in args.presets:
        for bits in args.bits:
            config = BQQConfig.preset(preset, bits=bits, device=args.device)
            start = time.perf_counter()
            packed = quantize_weights(weights, config, progress=True)
            seconds = time.perf_counter() - start
            sse = sum(float(((p.dequantize() - weights[n]) ** 2).sum()) for n, p in packed.items())
            rows.append([preset, str(bits), f"{total / 1e6:.2f}M", f"{seconds:.1f}",
                         f"{seconds / total * 1e6:.1f}", f"{sse / total / 0.02 ** 2:.4f}"])
            print(markdown_table(header, rows[-1:]), flush=True)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    section = f"\n## {stamp}\n\n{machine_summary()}; solver on {device}\n\n{markdown_table(header, rows)}\n"
    append_result("preset_time.md", "# Preset wall time on an 11.8M-weight encoder\n\nWritten by "
                      "`python bench/preset_time.py`; one section per run.\n", section)


if __name__ == "__main__":
    main()
