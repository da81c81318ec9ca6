"""Quantisation quality on a real pretrained transformer (issue 12): all-MiniLM-L6-v2, every
encoder linear (36 layers, 10.6M weights), group 64, BQQ against round-to-nearest, HQQ and
GPTQ at equal or more bits per weight, with the time per million weights.

Metric: mean cosine of mean-pooled sentence embeddings against fp32 on held-out sentences
(bench/text_eval.py: stdlib docstrings, calibration and evaluation text disjoint), and the
per-layer output relative error on those sentences' layer inputs (fp32 model, real tokens).
For calibrated BQQ also the guard's record: layers where the held-out output error is above
the data-free solution's (same preset and stacks), and layers that kept data-free.

    python bench/minilm_quality.py                         # the whole table (an hour or more)
    python bench/minilm_quality.py --methods bqq-calib --bits 2 --preset fast   # one row

Methods: rtn, hqq (data-free), gptq (sequential: each group of linears calibrated on inputs
from the model quantised so far), bqq (data-free, --preset), bqq-calib (the shipped path:
quantize_model with the calibration sentences as padded batches and their attention mask).
--bits takes 2 2.5 3 ...: code bits for the peers (whole numbers only), stacks for BQQ (an
average such as 2.5 is the bit budget, calibrated only). Flags after --set change BQQConfig
fields of the BQQ rows (e.g. --set calib_guard=False steps=500).
"""

from __future__ import annotations

import argparse
import copy
import os
import resource
import sys
import time
from pathlib import Path

import torch

from bqq_deploy import BQQConfig, quantize_model
from bqq_deploy.atomic import atomic_write_bytes
from bqq_deploy.quantize import quantize_weights

import baselines
import peers
import text_eval
from matrix_compression import RESULTS, machine_summary, markdown_table

LAYER_ERROR_ROWS = 2048  # held-out rows per layer for the output error (memory bound)


def evenly(rows: torch.Tensor, n: int) -> torch.Tensor:
    return rows if len(rows) <= n else rows[torch.linspace(0, len(rows) - 1, n).long()]


def cpu_seconds() -> float:
    """CPU time of this process and its threads (user + system)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


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
        self.layer_errors: dict[str, dict[str, float]] = {}  # label -> per-layer output error

    def score(self, label: str, weights: dict, biases: dict, bits: float, seconds: float,
              cpu: float, note: str = "") -> list:
        with text_eval.swapped(self.model, weights, biases):
            emb = text_eval.embed(self.model, self.tokenizer, self.eval)
        cos = torch.nn.functional.cosine_similarity(self.reference, emb, dim=-1)
        out_err = text_eval.output_errors(self.weights, self.biases, self.held_out, weights, biases)
        self.layer_errors[label] = out_err
        w_err = [float((weights[n] - w).pow(2).mean() / w.var()) for n, w in self.weights.items()]
        mw = self.n_weights / 1e6
        row = [label, bits / self.n_weights, float(cos.mean()), float(cos.min()),
               sum(out_err.values()) / len(out_err), sum(w_err) / len(w_err), seconds,
               seconds / mw, cpu / mw, note]
        print("  " + " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in row), flush=True)
        return row


def timed(fn):
    start, cpu = time.perf_counter(), cpu_seconds()
    out = fn()
    return out, time.perf_counter() - start, cpu_seconds() - cpu


def run_rtn(bench: Bench, bits: int, quantizer, label: str) -> list:
    results, seconds, cpu = timed(lambda: {n: quantizer(w, bits) for n, w in bench.weights.items()})
    return bench.score(label, {n: r.weight for n, r in results.items()}, {},
                       sum(r.bits_per_weight * bench.weights[n].numel() for n, r in results.items()),
                       seconds, cpu)


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

    (weights, _), seconds, cpu = timed(lambda: text_eval.sequential_quantize(
        bench.model, bench.tokenizer, bench.calib, bench.names, quantizer))
    return bench.score(f"GPTQ {bits}-bit g64, {len(bench.calib)} sentences, sequential", weights, {},
                       sum(stored.values()), seconds, cpu)


def run_bqq(bench: Bench, config: BQQConfig, label: str) -> list:
    packed, seconds, cpu = timed(lambda: quantize_weights(bench.weights, config, progress=False))
    return bench.score(label, {n: p.dequantize() for n, p in packed.items()}, {},
                       sum(p.nbytes * 8 for p in packed.values()), seconds, cpu)


def run_bqq_calib(bench: Bench, config: BQQConfig, label: str, sequential: bool,
                  data_free_label: str | None) -> list:
    """The shipped path: quantize_model on the calibration sentences as padded batches of 64
    with their attention mask (found by the forward signature)."""
    batches = [dict(b) for b in text_eval.batches(bench.tokenizer, bench.calib)]
    model = copy.deepcopy(bench.model)
    report, seconds, cpu = timed(lambda: quantize_model(
        model, config, include=bench.names, calib_inputs=batches, sequential=sequential,
        progress=False))
    packed = report.weights
    kept_free = sorted(n for n, p in packed.items() if p.info.get("kept") == "data-free")
    mix = report.to_dict()["stacks"]
    note = ("stacks " + ", ".join(f"{k}: {v}" for k, v in mix.items()) + "; "
            f"guard kept data-free: {len(kept_free)} of {len(packed)} layers")
    row = bench.score(label, {n: p.dequantize() for n, p in packed.items()},
                      {n: p.bias for n, p in packed.items()}, sum(p.nbytes * 8 for p in packed.values()),
                      seconds, cpu, note)
    if data_free_label in bench.layer_errors:
        free, mine = bench.layer_errors[data_free_label], bench.layer_errors[label]
        worse = [n for n in mine if mine[n] > free[n]]
        ratio = max(mine[n] / free[n] for n in mine)
        row[-1] += (f"; held-out output error above data-free on {len(worse)} layers "
                    f"(worst ratio {ratio:.3f})")
        print(f"    {row[-1]}", flush=True)
    if len(mix) > 1:
        row[-1] += "; 3-stack layers: " + ", ".join(
            n.replace("encoder.layer.", "L") for n, p in packed.items() if p.stacks == max(map(int, mix)))
    return row


def parse_sets(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        field = BQQConfig.__dataclass_fields__.get(key)
        if field is None:
            raise SystemExit(f"--set: BQQConfig has no field {key!r}")
        kind = type(getattr(BQQConfig(), key))
        out[key] = value == "True" if kind is bool else kind(value)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=["rtn", "hqq", "gptq", "bqq", "bqq-calib"])
    parser.add_argument("--bits", type=float, nargs="+", default=[2, 2.5, 3, 4],
                        help="code bits (peers: whole numbers) and stacks (BQQ <= 3)")
    parser.add_argument("--preset", default="balanced", help="BQQConfig preset")
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                        help="BQQConfig overrides for the BQQ rows")
    parser.add_argument("--no-sequential", action="store_true",
                        help="bqq-calib: every layer calibrated on the float model's inputs")
    parser.add_argument("--calib-sentences", type=int, default=128)
    parser.add_argument("--eval-sentences", type=int, default=256)
    parser.add_argument("--gptq-damp", type=float, default=0.01)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: the solver's batches here are small, and "
                             "on a shared machine two threads spin on a busy core)")
    parser.add_argument("--out", type=Path, default=RESULTS / "minilm_quality.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    overrides = parse_sets(args.set)
    load_before = os.getloadavg()
    bench = Bench(args.calib_sentences, args.eval_sentences)
    print(f"{len(bench.names)} linears, {bench.n_weights / 1e6:.2f}M weights; "
          f"{len(bench.calib)} calibration / {len(bench.eval)} evaluation sentences", flush=True)
    rows = []
    sequential = not args.no_sequential
    for bits in args.bits:
        whole = bits == int(bits)
        if whole:
            b = int(bits)
            if "rtn" in args.methods:
                rows.append(run_rtn(bench, b, lambda w, k: baselines.rtn_quantize(w, k, 64), f"RTN {b}-bit g64"))
            if "hqq" in args.methods:
                rows.append(run_rtn(bench, b, lambda w, k: peers.hqq_quantize(w, k, 64), f"HQQ {b}-bit g64"))
            if "gptq" in args.methods:
                rows.append(run_gptq(bench, b, args.gptq_damp))
        if bits > 3:
            continue
        config = BQQConfig.preset(args.preset, bits=bits, group_size=64, seed=0, device="cpu", **overrides)
        extra = "".join(f", {k}={v}" for k, v in overrides.items())
        free_label = f"BQQ p={bits:g} {args.preset}{extra}, data-free"
        if "bqq" in args.methods and whole:
            rows.append(run_bqq(bench, config, free_label))
        if "bqq-calib" in args.methods:
            label = (f"BQQ p={bits:g} {args.preset}{extra}, calibrated ({len(bench.calib)} sentences"
                     f"{', sequential' if sequential else ', float-model inputs'})")
            rows.append(run_bqq_calib(bench, config, label, sequential, free_label))
    load_after = os.getloadavg()
    header = ["method", "bits/weight", "mean cosine", "min cosine", "layer output rel. error",
              "weight MSE / Var(W)", "wall s", "wall s / M weights", "CPU s / M weights", "notes"]
    command = " ".join(["python bench/minilm_quality.py", *(argv if argv is not None else sys.argv[1:])])
    text = "\n".join([
        "# BQQ and peers on all-MiniLM-L6-v2", "",
        f"Generated by `{command}`.", f"Machine: {machine_summary()}; load average "
        f"{load_before[0]:.1f} at the start, {load_after[0]:.1f} at the end (other jobs share the "
        "machine: wall times are upper bounds, CPU seconds are this process's own).", "",
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
