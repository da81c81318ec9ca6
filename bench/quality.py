"""Quantisation quality on real trained weights (issue 7): BQQ vs round-to-nearest and
binary-coding quantisation at comparable bits per weight, on every nn.Linear of the
trained digits ViTs (the bundled demo model and a few-million-parameter one).

Per method: weight MSE (mean over layers and over all weights), output MSE of each layer on
held-out layer inputs (captured with forward hooks on test images), and held-out task
accuracy with every linear weight replaced by its dequantised version.

    python bench/quality.py                                  # full run, writes the page
    python bench/quality.py --models digits_vit --presets fast --out /tmp/q.md   # quick

The large model is trained on demand (models/train_digits_vit.py) when no cached copy is
found under models/ or out/.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from bqq_deploy import BQQConfig
from bqq_deploy.datasets import digits_split
from bqq_deploy.atomic import atomic_write_bytes
from bqq_deploy.models import load_trained
from bqq_deploy.quantize import quantize_weights

import baselines
from matrix_compression import REPO, RESULTS, machine_summary, markdown_table

CALIB_IMAGES = 128  # training images whose layer inputs calibrate "BQQ + calib"
EVAL_IMAGES = 200   # held-out images whose layer inputs measure output MSE


@dataclass
class Method:
    name: str
    weights: dict[str, torch.Tensor]  # dequantised, per layer
    biases: dict[str, torch.Tensor]   # replaced biases (calibrated BQQ only)
    bits: float                       # total stored bits of all layers
    seconds: float


def model_path(name: str) -> Path:
    """The cached TorchScript file of a trained model, training it first if missing.
    Models above 20 MB are kept out of the repository (out/ is git-ignored)."""
    for directory in (REPO / "models", REPO / "out"):
        if (directory / f"{name}.pt").exists():
            return directory / f"{name}.pt"
    out_dir = REPO / "out"
    print(f"training {name} (not cached) ...", flush=True)
    subprocess.run([sys.executable, str(REPO / "models" / "train_digits_vit.py"), "--model", name,
                    "--out-dir", str(out_dir)], check=True)
    path = out_dir / f"{name}.pt"
    if path.stat().st_size < 20 * 2**20:  # small enough to keep with the sources
        for suffix in (".pt", ".json"):
            path.with_suffix(suffix).replace(REPO / "models" / f"{name}{suffix}")
        path = REPO / "models" / f"{name}.pt"
    return path


def linear_inputs(model: nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Input rows [N * tokens, K] of every nn.Linear for a batch of images."""
    captured: dict[str, list[torch.Tensor]] = {}
    hooks = [module.register_forward_hook(
        lambda mod, args, out, name=name: captured.setdefault(name, []).append(
            args[0].detach().reshape(-1, args[0].shape[-1])))
        for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    try:
        with torch.no_grad():
            model(images)
    finally:
        for hook in hooks:
            hook.remove()
    return {name: torch.cat(parts) for name, parts in captured.items()}


@torch.no_grad()
def accuracy(model: nn.Module, weights: dict, biases: dict, x: torch.Tensor, y: torch.Tensor) -> float:
    """Held-out accuracy with the given weights (and biases) swapped in, then restored."""
    modules = dict(model.named_modules())
    saved = {n: (modules[n].weight.clone(), modules[n].bias.clone()) for n in weights}
    try:
        for name, w in weights.items():
            modules[name].weight.copy_(w)
            if name in biases:
                modules[name].bias.copy_(biases[name])
        return float((model(x).argmax(-1) == y).float().mean())
    finally:
        for name, (w, b) in saved.items():
            modules[name].weight.copy_(w)
            modules[name].bias.copy_(b)


def run_bqq(layers: dict, biases: dict, config: BQQConfig, calib: dict | None, label: str) -> Method:
    start = time.perf_counter()
    packed = quantize_weights(layers, config, biases=biases if calib else None, calib=calib,
                              progress=False)
    seconds = time.perf_counter() - start
    return Method(label, {n: p.dequantize() for n, p in packed.items()},
                  {n: p.bias for n, p in packed.items() if calib and p.bias is not None},
                  sum(p.nbytes * 8 for p in packed.values()), seconds)


def run_baseline(layers: dict, quantizer, label: str) -> Method:
    start = time.perf_counter()
    results = {n: quantizer(w) for n, w in layers.items()}
    seconds = time.perf_counter() - start
    return Method(label, {n: r.weight for n, r in results.items()}, {},
                  sum(r.bits_per_weight * layers[n].numel() for n, r in results.items()), seconds)


def evaluate(model_name: str, args) -> tuple[str, list[list], dict]:
    model, meta = load_trained(model_path(model_name))
    x_train, _, x_test, y_test = (torch.from_numpy(a) for a in digits_split(seed=0))
    layers = {n: m.weight.detach().clone() for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    biases = {n: m.bias.detach().clone() for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    n_weights = sum(w.numel() for w in layers.values())
    held_out = linear_inputs(model, x_test[:EVAL_IMAGES])
    calib = linear_inputs(model, x_train[:CALIB_IMAGES])
    fp_accuracy = accuracy(model, {}, {}, x_test, y_test)
    methods = []
    for bits in args.bits:
        for preset in args.presets:
            config = replace(BQQConfig.preset(preset), bits=bits, group_size=64, seed=0, device="cpu")
            if args.steps is not None:
                config = replace(config, steps=args.steps)
            methods.append(run_bqq(layers, biases, config, None, f"BQQ p={bits} {preset}"))
            print(f"  {methods[-1].name}: {methods[-1].seconds:.1f}s", flush=True)
        if args.calib_preset:
            config = replace(BQQConfig.preset(args.calib_preset), bits=bits, group_size=64, seed=0,
                             device="cpu")
            if args.steps is not None:
                config = replace(config, steps=args.steps)
            methods.append(run_bqq(layers, biases, config, calib,
                                   f"BQQ p={bits} {args.calib_preset} + calib"))
            print(f"  {methods[-1].name}: {methods[-1].seconds:.1f}s", flush=True)
        for group in (64, 128):
            methods.append(run_baseline(layers, lambda w, g=group: baselines.rtn_quantize(w, bits, g),
                                        f"RTN {bits}-bit g{group}"))
        methods.append(run_baseline(layers, lambda w: baselines.bcq_quantize(w, bits),
                                    f"BCQ {bits}-bit per-row"))
    rows = []
    summary = {"fp_accuracy": fp_accuracy, "weights": n_weights, "layers": len(layers),
               "parameters": meta["parameters"], "mse": {}}
    for method in methods:
        layer_mse = {n: float(((method.weights[n] - w) ** 2).mean()) for n, w in layers.items()}
        overall = sum(layer_mse[n] * w.numel() for n, w in layers.items()) / n_weights
        rel = sum(layer_mse[n] / float(w.var()) for n, w in layers.items()) / len(layers)
        out_rel = []
        for name, x in held_out.items():
            ref = x @ layers[name].T
            err = x @ method.weights[name].T - ref
            if name in method.biases:
                err = err + (method.biases[name] - biases[name])
            out_rel.append(float(err.pow(2).mean() / ref.var()))
        acc = accuracy(model, method.weights, method.biases, x_test, y_test)
        summary["mse"][method.name] = overall
        rows.append([method.name, method.bits / n_weights, sum(layer_mse.values()) / len(layer_mse),
                     overall, rel, sum(out_rel) / len(out_rel), acc, method.seconds,
                     method.seconds / (n_weights / 1e6)])
    return meta, rows, summary


def acceptance(summary: dict, bits: list[int], presets: list[str]) -> list[str]:
    """The project's targets: BQQ 2-stack weight MSE <= 0.7x RTN 2-bit g64; 3-stack <= RTN 3-bit g64."""
    lines = []
    for p, factor in ((2, 0.7), (3, 1.0)):
        if p not in bits:
            continue
        rtn = summary["mse"][f"RTN {p}-bit g64"]
        for preset in presets:
            ratio = summary["mse"][f"BQQ p={p} {preset}"] / rtn
            verdict = "met" if ratio <= factor else "NOT met"
            lines.append(f"- p={p} `{preset}`: BQQ / RTN g64 weight MSE = {ratio:.3f} "
                         f"(target <= {factor}): {verdict}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["digits_vit", "digits_vit_large"])
    parser.add_argument("--presets", nargs="+", default=["fast", "balanced"],
                        help="BQQConfig presets to run data-free")
    parser.add_argument("--calib-preset", default="fast",
                        help="preset for the calibrated BQQ row ('' to skip)")
    parser.add_argument("--steps", type=int, help="override the presets' annealing steps")
    parser.add_argument("--bits", type=int, nargs="+", default=[2, 3])
    parser.add_argument("--out", type=Path, default=RESULTS / "quality.md")
    parser.add_argument("--append", action="store_true",
                        help="add the model sections to an existing page (e.g. another model "
                             "run with other presets) instead of replacing it")
    args = parser.parse_args(argv)
    header = ["method", "bits/weight", "weight MSE (layer mean)", "weight MSE (all)",
              "MSE / Var(W)", "output rel. MSE", "accuracy", "seconds", "s / M weights"]
    sections = []
    for name in args.models:
        print(f"{name}:", flush=True)
        meta, rows, summary = evaluate(name, args)
        sections += [
            f"## {name}: {summary['parameters'] / 1e6:.2f}M parameters, {summary['layers']} linear "
            f"layers, {summary['weights'] / 1e6:.3f}M linear weights",
            "",
            f"Float accuracy (held-out, {meta['dataset']['test']} images): {summary['fp_accuracy']:.4f}.",
            "",
            markdown_table(header, rows),
            "",
            "Acceptance:",
            *acceptance(summary, args.bits, args.presets),
            "",
        ]
        print("\n".join(sections[-(len(rows) + 8):]), flush=True)
    command = f"`{' '.join(['python bench/quality.py', *(argv if argv is not None else sys.argv[1:])])}`"
    if args.append and args.out.exists():
        text = "\n".join([args.out.read_text().rstrip("\n"), "", f"Appended by {command} "
                          f"(machine: {machine_summary()}).", "", *sections])
        atomic_write_bytes(args.out, [text.encode()])
        print(f"appended to {args.out}")
        return 0
    text = "\n".join([
        "# BQQ quality on trained weights",
        "",
        f"Generated by {command}.",
        f"Machine: {machine_summary()}.",
        "BQQ: 64x64 blocks, rank 32, seed 0, CPU, the named `BQQConfig.preset` "
        + (f"with {args.steps} annealing steps per stack" if args.steps is not None else "settings")
        + "; data-free unless marked `+ calib` (output-error refit of the scales and bias "
        f"correction on the layer inputs of {CALIB_IMAGES} training images). Every nn.Linear is "
        "quantised, the 10-output head included (its 64-row block padding counts in bits/weight).",
        "RTN: uniform asymmetric round-to-nearest per group of g inputs, fp16 scale + zero. "
        "BCQ: binary-coding quantisation, fp16 alphas per row. Bits per weight count every "
        "stored bit of all linear weights (codes, scales, zeros, alphas, block padding).",
        f"Output rel. MSE: per layer mean((X W^T - X W_hat^T)^2) / Var(X W^T) on the layer inputs "
        f"of {EVAL_IMAGES} held-out images, averaged over layers. MSE / Var(W): per layer, averaged. "
        "Accuracy: all linear weights replaced at once, full held-out split.",
        "",
        *sections,
    ])
    atomic_write_bytes(args.out, [text.encode()])
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
