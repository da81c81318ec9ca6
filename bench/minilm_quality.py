"""Quantisation quality on a real pretrained transformer (issue 12): all-MiniLM-L6-v2, every
encoder linear (36 layers, 10.6M weights), group 64, against round-to-nearest, HQQ and GPTQ.

Metric: mean cosine of mean-pooled sentence embeddings against fp32 on held-out sentences
(bench/text_eval.py: stdlib docstrings, calibration and evaluation text disjoint), and the
per-layer output relative error on those sentences' layer inputs (fp32 model, real tokens).

    python bench/minilm_quality.py                                   # the issue's table
    python bench/minilm_quality.py --methods rtn hqq --bits 2 3      # a part of it

Methods: rtn, hqq (data-free), gptq (sequential: each group of linears calibrated on inputs
from the model quantised so far), bqq (data-free, --preset), bqq-calib (the current
`quantize_model(..., calib_inputs=...)` path: one padded batch of the calibration sentences).
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from bqq_deploy import BQQConfig, quantize_model
from bqq_deploy.format import atomic_write_bytes
from bqq_deploy.quantize import quantize_weights

import baselines
import peers
import text_eval
from matrix_compression import RESULTS, machine_summary, markdown_table

LAYER_ERROR_ROWS = 2048  # held-out rows per layer for the output error (memory bound)


def evenly(rows: torch.Tensor, n: int) -> torch.Tensor:
    return rows if len(rows) <= n else rows[torch.linspace(0, len(rows) - 1, n).long()]


class Bench:
    """The model, its text and fp32 references, shared by every method."""

    def __init__(self, n_calib: int, n_eval: int):
        self.model, self.tokenizer = text_eval.load_minilm()
        self.calib, self.eval = text_eval.text_split(n_calib, n_eval)
        self.names = text_eval.encoder_linears(self.model)
        modules = dict(self.model.named_modules())
        self.weights = {n: modules[n].weight.detach().clone() for n in self.names}
        self.biases = {n: modules[n].bias.detach().clone() for n in self.names}
        self.n_weights = sum(w.numel() for w in self.weights.values())
        self.reference = text_eval.embed(self.model, self.tokenizer, self.eval)
        held_out = text_eval.capture_inputs(self.model, self.tokenizer, self.eval, self.names)
        self.held_out = {n: evenly(x, LAYER_ERROR_ROWS) for n, x in held_out.items()}

    def score(self, label: str, weights: dict, biases: dict, bits: float, seconds: float) -> list:
        with text_eval.swapped(self.model, weights, biases):
            emb = text_eval.embed(self.model, self.tokenizer, self.eval)
        cos = torch.nn.functional.cosine_similarity(self.reference, emb, dim=-1)
        out_err = text_eval.output_errors(self.weights, self.biases, self.held_out, weights, biases)
        w_err = [float((weights[n] - w).pow(2).mean() / w.var()) for n, w in self.weights.items()]
        row = [label, bits / self.n_weights, float(cos.mean()), float(cos.min()),
               sum(out_err.values()) / len(out_err), sum(w_err) / len(w_err), seconds,
               seconds / (self.n_weights / 1e6)]
        print("  " + " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in row), flush=True)
        return row


def run_rtn(bench: Bench, bits: int, quantizer, label: str) -> list:
    start = time.perf_counter()
    results = {n: quantizer(w, bits) for n, w in bench.weights.items()}
    seconds = time.perf_counter() - start
    return bench.score(label, {n: r.weight for n, r in results.items()}, {},
                       sum(r.bits_per_weight * bench.weights[n].numel() for n, r in results.items()), seconds)


def run_gptq(bench: Bench, bits: int, damp: float) -> list:
    stored = {}

    def quantizer(weights, _biases, inputs):
        out = {}
        for name, w in weights.items():
            x = inputs[name].double()
            q = peers.gptq_quantize(w, x.T @ x, bits, 64, damp=damp)
            stored[name] = q.bits_per_weight * w.numel()
            out[name] = q.weight
        return out, {}

    start = time.perf_counter()
    weights, _ = text_eval.sequential_quantize(bench.model, bench.tokenizer, bench.calib, bench.names, quantizer)
    seconds = time.perf_counter() - start
    return bench.score(f"GPTQ {bits}-bit g64, {len(bench.calib)} sentences, sequential", weights, {},
                       sum(stored.values()), seconds)


def run_bqq(bench: Bench, config: BQQConfig, label: str, cache_dir: Path | None) -> list:
    start = time.perf_counter()
    packed = quantize_weights(bench.weights, config, cache_dir=cache_dir, progress=False)
    seconds = time.perf_counter() - start
    return bench.score(label, {n: p.dequantize() for n, p in packed.items()}, {},
                       sum(p.nbytes * 8 for p in packed.values()), seconds)


def run_bqq_calib(bench: Bench, config: BQQConfig, label: str) -> list:
    """The shipped path: quantize_model with one padded batch of calibration sentences."""
    batch = bench.tokenizer(bench.calib, padding=True, truncation=True, max_length=128,
                            return_tensors="pt")
    model = copy.deepcopy(bench.model)
    start = time.perf_counter()
    report = quantize_model(model, config, include=bench.names, calib_inputs=(batch["input_ids"],
                            batch["attention_mask"]), progress=False)
    seconds = time.perf_counter() - start
    packed = report.weights
    return bench.score(label, {n: p.dequantize() for n, p in packed.items()},
                       {n: p.bias for n, p in packed.items()}, sum(p.nbytes * 8 for p in packed.values()),
                       seconds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=["rtn", "hqq", "gptq", "bqq", "bqq-calib"])
    parser.add_argument("--bits", type=int, nargs="+", default=[2, 3, 4],
                        help="code bits (RTN/HQQ/GPTQ) and stacks (BQQ, 2-3 only)")
    parser.add_argument("--preset", default="balanced", help="BQQConfig preset")
    parser.add_argument("--calib-sentences", type=int, default=128)
    parser.add_argument("--eval-sentences", type=int, default=256)
    parser.add_argument("--gptq-damp", type=float, default=0.01)
    parser.add_argument("--cache-dir", type=Path,
                        help="keep data-free BQQ layers here (a rerun loads them; its time is then not a solve time)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", type=Path, default=RESULTS / "minilm_quality.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    bench = Bench(args.calib_sentences, args.eval_sentences)
    print(f"{len(bench.names)} linears, {bench.n_weights / 1e6:.2f}M weights; "
          f"{len(bench.calib)} calibration / {len(bench.eval)} evaluation sentences", flush=True)
    rows = []
    for bits in args.bits:
        if "rtn" in args.methods:
            rows.append(run_rtn(bench, bits, lambda w, b: baselines.rtn_quantize(w, b, 64), f"RTN {bits}-bit g64"))
        if "hqq" in args.methods:
            rows.append(run_rtn(bench, bits, lambda w, b: peers.hqq_quantize(w, b, 64), f"HQQ {bits}-bit g64"))
        if "gptq" in args.methods:
            rows.append(run_gptq(bench, bits, args.gptq_damp))
        if bits > 3:
            continue
        config = BQQConfig.preset(args.preset, bits=bits, group_size=64, seed=0, device="cpu")
        if "bqq" in args.methods:
            rows.append(run_bqq(bench, config, f"BQQ p={bits} {args.preset}, data-free", args.cache_dir))
        if "bqq-calib" in args.methods:
            rows.append(run_bqq_calib(bench, config, f"BQQ p={bits} {args.preset}, quantize_model calib "
                                                     f"({len(bench.calib)} sentences)"))
    header = ["method", "bits/weight", "mean cosine", "min cosine", "layer output rel. error",
              "weight MSE / Var(W)", "seconds", "s / M weights"]
    command = " ".join(["python bench/minilm_quality.py", *(argv if argv is not None else sys.argv[1:])])
    text = "\n".join([
        "# BQQ and peers on all-MiniLM-L6-v2", "",
        f"Generated by `{command}`.", f"Machine: {machine_summary()}.", "",
        f"{len(bench.names)} encoder linears ({bench.n_weights / 1e6:.2f}M weights), group 64, every "
        "stored float fp16 (bits/weight count codes, scales and zeros). Cosine: mean-pooled "
        f"sentence embeddings vs fp32 on {len(bench.eval)} held-out sentences (bench/text_eval.py). "
        f"Layer output error: per layer mean squared error / output variance on up to {LAYER_ERROR_ROWS} "
        "held-out token rows, averaged over layers.", "",
        markdown_table(header, rows), ""])
    atomic_write_bytes(args.out, [text.encode()])
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
