"""A 0.5-billion-parameter decoder through the normal export path, end to end: a Qwen2-0.5B
shaped `transformers` model (hidden 896, 24 layers, 14 heads, 2 KV heads, MLP 4864, vocabulary
151,936, tied embeddings: 494M parameters, 1.98 GB in fp32) built from its config with random
weights (no download), exported without KV cache through the normal path: torch writes an
fp32 ONNX file (external data) and `bqq-export` quantises it in a process of its own
(--source onnx), or bqq_deploy.export_model takes the model in memory (--source module).
Then model.onnx in ONNX Runtime against the PyTorch model holding the dequantised weights
on a few tokens. Appends the time, peak RSS per stage and the parity to
bench/results/decoder_scale.md with the machine named.

    nice -n 10 python bench/decoder_scale.py --threads 1          # the 0.5B model, preset fast
    nice -n 10 python bench/decoder_scale.py --threads 1 --nproc 2   # the same, 2 torchrun ranks
    python bench/decoder_scale.py --layers 2 --vocab 8192 --steps 0 --no-record   # a rehearsal
    nice -n 10 python bench/decoder_scale.py --threads 1 --pipeline-only    # memory, not quality
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from matrix_compression import append_result, machine_summary

from bqq_deploy import BQQConfig, export_model, load_layers
from bqq_deploy.memory import peak_rss_mib, reset_peak
from bqq_deploy.report import ExportReport
from bqq_deploy.runtime import load

# --pipeline-only: the export in a process of its own through the Python API, with the
# cheapest solve (1 bit, the SVD start's signs, no annealing, no flips): every stage and its
# memory at full size in minutes; the bits say nothing about quality.
CHEAPEST = BQQConfig(bits=1, steps=0, flip_rounds=0, joint_refine=False, seed=0)
SHAPES = ["input_ids:1x1/1x16/8x512", "attention_mask:1x1/1x16/8x512"]
_PIPELINE_ONLY = f"""
import sys
from bqq_deploy import BQQConfig
from bqq_deploy.export import ExportOptions, export_bundle, load_model
export_bundle(load_model(sys.argv[1], shape_ranges={SHAPES!r}), sys.argv[2],
              ExportOptions(config=BQQConfig(**{CHEAPEST.to_dict()!r}), shapes={SHAPES!r},
                            force=True, progress=False, bench_iters=0))
"""

# Qwen2-0.5B's config (config.json of Qwen/Qwen2-0.5B), typed in: nothing is downloaded.
QWEN2_05B = dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14,
                 num_key_value_heads=2, intermediate_size=4864, vocab_size=151936,
                 max_position_embeddings=32768, rope_theta=1_000_000.0, rms_norm_eps=1e-6,
                 tie_word_embeddings=True)


def build(layers: int, vocab: int):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(**{**QWEN2_05B, "num_hidden_layers": layers, "vocab_size": vocab},
                         use_cache=False)
    return Qwen2ForCausalLM(config).eval()


def tokens(batch: int, seq: int, seed: int, vocab: int) -> dict[str, torch.Tensor]:
    ids = torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(seed))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def dequantised_parity(model, bundle: Path, feeds: dict[str, torch.Tensor], ops: dict[str, str]) -> float:
    """max|ORT(model.onnx) - torch| / max|torch| on feeds, the torch model holding every
    W_hat of layers.bqq.safetensors (the tied embedding and LM head untied: each has its own
    W_hat); ops: each layer's ONNX op (the report's). Changes model in place."""
    state = model.state_dict(keep_vars=True)
    with torch.no_grad():
        for name, weight in load_layers(bundle / "layers.bqq.safetensors").items():
            # export_model names layers by parameter; an ONNX file by the module path it
            # records, under the Logits wrapper's "model.", or the initializer's name (the
            # tied table, "model.lm_head.weight", read by Gather: the embedding)
            inner = name.removeprefix("model.")
            key = ("model.embed_tokens.weight" if ops[name] == "Gather" else
                   next(k for k in (name, inner, inner + ".weight") if k in state))
            w_hat = weight.dequantize()
            if key == "lm_head.weight":
                model.lm_head.weight = torch.nn.Parameter(w_hat)
            else:
                state[key].copy_(w_hat)
            if weight.bias is not None:
                state[key.removesuffix("weight") + "bias"].copy_(weight.bias)
        want = model(**feeds).logits.numpy()
    got = load(bundle / "model.onnx", backend="onnxruntime",
               providers=["CPUExecutionProvider"]).run({k: v.numpy() for k, v in feeds.items()})["logits"]
    return float(np.abs(got - want).max() / np.abs(want).max())


def export_onnx(model, path: Path, vocab: int) -> None:
    """model as an fp32 ONNX file with external data (torch's torch.export-based exporter,
    dynamic batch and sequence, logits only)."""
    class Logits(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask):
            return self.model(input_ids=input_ids, attention_mask=attention_mask).logits

    example = tokens(1, 8, seed=0, vocab=vocab)
    batch, seq = torch.export.Dim("batch", min=1, max=8), torch.export.Dim("seq", min=1, max=512)
    program = torch.onnx.export(Logits(model).eval(), (example["input_ids"], example["attention_mask"]),
                                None, dynamo=True, input_names=["input_ids", "attention_mask"],
                                output_names=["logits"], opset_version=18, optimize=True,
                                dynamic_shapes=({0: batch, 1: seq}, {0: batch, 1: seq}))
    program.save(str(path), external_data=True)


def run_peak(command: list[str], threads: int | None) -> tuple[int, float, float]:
    """Run command (on `threads` torch threads); its exit status, wall seconds and peak RSS in
    MiB (sampled every 0.2 s: the sum over the process and its children, so torchrun's ranks
    count together; the report's per-stage peaks do not cover what precedes the export)."""
    import psutil

    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    start = time.perf_counter()
    proc = subprocess.Popen(command, env=env)
    watched, peak = psutil.Process(proc.pid), 0.0
    while proc.poll() is None:
        rss = 0
        for member in [watched, *watched.children(recursive=True)]:
            try:
                rss += member.memory_info().rss
            except psutil.NoSuchProcess:
                pass
        peak = max(peak, rss / 2**20)
        time.sleep(0.2)
    return proc.wait(), time.perf_counter() - start, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=QWEN2_05B["num_hidden_layers"])
    parser.add_argument("--vocab", type=int, default=QWEN2_05B["vocab_size"],
                        help="a smaller vocabulary for rehearsals")
    parser.add_argument("--source", choices=("onnx", "module"), default="onnx",
                        help="onnx: bqq-export on an ONNX file torch wrote (the model file path); "
                             "module: bqq_deploy.export_model on the model in memory")
    parser.add_argument("--preset", default="fast")
    parser.add_argument("--steps", type=int, help="override the preset (rehearsals)")
    parser.add_argument("--flip-rounds", type=int, help="override the preset (rehearsals)")
    parser.add_argument("--out", type=Path, help="bundle directory (default: a temporary one)")
    parser.add_argument("--cache-dir", type=Path, help="solver cache (resume an interrupted run)")
    parser.add_argument("--onnx", type=Path, help="--source onnx: the file an earlier run of this "
                        "script wrote for the same --layers and --vocab (skips the torch export)")
    parser.add_argument("--pipeline-only", action="store_true",
                        help="--source onnx with the cheapest solve (CHEAPEST): stages and memory")
    parser.add_argument("--threads", type=int, help="solver threads of bqq-export (on a loaded "
                        "machine one thread is several times faster than two)")
    parser.add_argument("--nproc", type=int, default=1, help="--source onnx: bqq-export under "
                        "torchrun with this many ranks (gloo; docs/SCALE.md)")
    parser.add_argument("--shared", default="yes", help="whether other jobs shared the machine")
    parser.add_argument("--no-record", action="store_true", help="print, do not append results")
    args = parser.parse_args()
    if args.flip_rounds is not None and args.source == "onnx":  # before minutes of building
        raise SystemExit("--flip-rounds: bqq-export has no such flag; use --source module")
    if args.threads:
        torch.set_num_threads(args.threads)
    config = BQQConfig.preset(args.preset, seed=0)
    config = replace(config, **{k: v for k, v in (("steps", args.steps), ("flip_rounds", args.flip_rounds))
                                if v is not None})
    if args.pipeline_only:
        config, args.preset = CHEAPEST, "pipeline-only"
    scratch = Path(tempfile.mkdtemp(prefix="bqq-decoder-scale-"))
    out = args.out or scratch / "bundle"
    rows = []
    try:
        reset_peak()
        start = time.perf_counter()
        model = build(args.layers, args.vocab)
        parameters = sum(p.numel() for p in model.parameters())
        rows.append(("build the model (torch, random weights)", time.perf_counter() - start, peak_rss_mib()))
        fp32_mib = parameters * 4 / 2**20
        if args.source == "onnx":
            onnx_file = args.onnx or scratch / "qwen2.onnx"
            if args.onnx is None:
                reset_peak()
                start = time.perf_counter()
                export_onnx(model, onnx_file, args.vocab)
                rows.append(("torch.onnx.export to a file (not bqq-export)",
                             time.perf_counter() - start, peak_rss_mib()))
            del model
            gc.collect()
            launcher = (["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={args.nproc}",
                         "--module"] if args.nproc > 1 else ["-m"])
            command = [sys.executable, *launcher, "bqq_deploy.cli.export", str(onnx_file),
                       "-o", str(out), "--quality", args.preset, "--seed", "0", "--no-validate",
                       "--force", *(f"--shapes={shape}" for shape in SHAPES)]
            command += ["--steps", str(config.steps)] if args.steps is not None else []
            cache = args.cache_dir or (scratch / "cache" if args.nproc > 1 else None)  # ranks meet there
            command += ["--cache-dir", str(cache)] if cache else ["--no-cache"]
            if args.pipeline_only:
                command = [sys.executable, "-c", _PIPELINE_ONLY, str(onnx_file), str(out)]
            status, export_s, export_peak = run_peak(command, args.threads)
            if status != 0:
                raise SystemExit(f"bqq-export exited with {status}")
            report = ExportReport.from_dict(json.loads((out / "report.json").read_text()))
            model = build(args.layers, args.vocab)  # the same seed: the same weights
            how = ("`export_bundle` on the ONNX file, a process of its own, cheapest solve "
                   "(--pipeline-only)" if args.pipeline_only else
                   "`bqq-export` on the ONNX file, a process of its own")
        else:
            example = tokens(1, 8, seed=0, vocab=args.vocab)
            start = time.perf_counter()
            report = export_model(model, example, out, config=config, force=True, progress=True,
                                  dynamic_shapes={k: {0: "batch", 1: "seq"} for k in example},
                                  cache_dir=args.cache_dir)
            export_s, export_peak = time.perf_counter() - start, max(report.peak_rss_mib.values())
            how = "`bqq_deploy.export_model` on the model in memory, in this process"
        rows += [(f"export: {name}", report.timings_s[name], mib) for name, mib in report.peak_rss_mib.items()]
        reset_peak()
        rel = dequantised_parity(model, out, tokens(2, 5, seed=1, vocab=args.vocab),
                                 {layer.layer: layer.onnx_op for layer in report.layers})  # other batch and length
        rows.append(("ORT vs dequantised torch (2 x 5 tokens)", None, peak_rss_mib()))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    parity = report.validation["vs_bqq_reference"]["outputs"][0]
    cached = sum(bool(layer.solver.get("cache_hit")) for layer in report.layers)
    lines = [
        f"\n## {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}: {how}\n",
        f"{machine_summary()}; machine shared with other jobs: {args.shared}; "
        f"niceness {os.nice(0)}; bqq-export on {args.threads or torch.get_num_threads()} "
        f"thread(s){f' per rank, {args.nproc} torchrun ranks' if args.nproc > 1 else ''}"
        f"{f'; {cached} of {len(report.layers)} layers read from the solver cache (an earlier run)' if cached else ''}"
        f"{'; the ONNX file of an earlier run' if args.onnx else ''}\n",
        f"Qwen2 shape, {args.layers} layers, vocabulary {args.vocab}: {parameters / 1e6:.1f}M parameters, fp32 "
        f"{fp32_mib:.0f} MiB. Preset `{args.preset}` ({config.bits} bits, {config.steps} steps, "
        f"{config.flip_rounds} flip rounds), {len(report.layers)} layers quantised, "
        f"{len(report.skipped)} left in float; {report.quantised['bits_per_weight']:.3f} bits per "
        f"quantised weight, bundle {report.sizes['bundle_bytes'] / 2**20:.0f} MiB.\n",
        "| stage | seconds | peak RSS MiB | x fp32 size |", "|---|---|---|---|",
        *(f"| {name} | {'-' if s is None else f'{s:.1f}'} | {mib:.0f} | {mib / fp32_mib:.2f} |"
          for name, s, mib in rows),
        f"| **the export, whole** | **{export_s:.0f}** | **{export_peak:.0f}** | "
        f"**{export_peak / fp32_mib:.2f}** |", "",
        f"Parity, model.onnx in ONNX Runtime vs the PyTorch model with every W_hat: max rel "
        f"{rel:.2e} on 2 x 5 tokens (this script); the report's own check "
        f"({report.validation['vs_bqq_reference_kind']}): max rel {parity['max_rel']:.2e}, "
        f"cosine {parity['cosine']:.7f}; verdict {report.verdict['status']}.\n"]
    text = "\n".join(lines)
    print(text)
    if args.no_record:
        return
    append_result("decoder_scale.md", "# A 0.5B decoder end to end: time and peak memory\n\nWritten by "
                      "`python bench/decoder_scale.py` (docstring: what it runs); one section "
                      "per run. Peak RSS per stage is the kernel's (VmHWM, reset at each "
                      "stage); a bqq-export process's whole peak is sampled every 0.2 s.\n", text)


if __name__ == "__main__":
    main()
