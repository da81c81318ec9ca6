"""Quantiser speed on the GPU: bqq_deploy.quantize_weights on a few Gaussian matrices with
BQQConfig(device="cuda") presets fast and balanced; prints seconds per million weights.
Usage: python3 bench/quantize_gpu_time.py [--sizes 1024x1024,1024x1024,4096x4096] [--presets fast,balanced]"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from bqq_deploy import BQQConfig, quantize_weights


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1024x1024,1024x1024,4096x4096")
    parser.add_argument("--presets", default="fast,balanced")
    parser.add_argument("--device", default="cuda", help="cpu only to rehearse the script")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("quantize_gpu_time needs a CUDA GPU (torch reports none)", file=sys.stderr)
        return 2
    gen = torch.Generator().manual_seed(0)
    weights = {}
    for index, size in enumerate(args.sizes.split(",")):
        m, k = (int(v) for v in size.split("x"))
        weights[f"w{index}_{m}x{k}"] = 0.02 * torch.randn(m, k, generator=gen)
    total = sum(w.numel() for w in weights.values())
    print(f"| preset | device | matrices | weights | seconds | s per million weights |")
    print("|---|---|---|---|---|---|")
    for preset in args.presets.split(","):
        config = BQQConfig.preset(preset, device=args.device)
        quantize_weights({"warmup": weights[next(iter(weights))][:64, :64].clone()}, config, progress=False)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        quantize_weights(weights, config, progress=False)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        print(f"| {preset} | {args.device} | {args.sizes} | {total} | {seconds:.1f} | {seconds / total * 1e6:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
