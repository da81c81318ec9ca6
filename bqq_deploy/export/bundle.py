"""The bundle directory, written atomically (built in a temporary directory next to OUT and
renamed into place), and its report.json / report.md."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from ..cli.common import UsageError
from ..format import atomic_write_bytes


def check_destination(out: Path, force: bool) -> None:
    """Refuse an OUT that is a file, a non-empty directory (unless force), or one whose
    nearest existing parent is not a writable directory."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out}: exists and is not a directory")
    ancestor = out.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UsageError(f"{out}: cannot create it, {ancestor} is not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise UsageError(f"{out}: cannot create it, {ancestor} is not writable")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise UsageError(f"{out}: directory exists and is not empty (pass --force to replace it)")


@contextmanager
def atomic_bundle(out: str | os.PathLike, force: bool = False):
    """Yield a temporary directory next to out; on success it replaces out (an existing out
    is only removed after the new bundle is complete), on any error it is deleted."""
    out = Path(out)
    check_destination(out, force)
    try:  # os.access can say yes where creation still fails (root on /proc, read-only mounts)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    except OSError as exc:
        raise UsageError(f"{out}: cannot create it ({exc.strerror or exc})") from None
    try:
        yield tmp
        _default_permissions(tmp)
        check_destination(out, force)  # still true after the (long) export?
        if out.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
            os.replace(out, trash / out.name)
            os.replace(tmp, out)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _default_permissions(directory: Path) -> None:
    """mkdtemp / mkstemp create private (0700 / 0600) entries; a bundle gets the usual
    permissions under the process umask."""
    umask = os.umask(0)
    os.umask(umask)
    for path in [directory, *directory.rglob("*")]:
        if not path.is_symlink():
            path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def write_report(directory: Path, report: dict) -> None:
    """report.json (everything) and report.md (the same for people)."""
    atomic_write_bytes(directory / "report.json",
                       [(json.dumps(report, indent=2, default=_jsonable) + "\n").encode()])
    atomic_write_bytes(directory / "report.md", [report_markdown(report).encode()])


def _jsonable(value):
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _mb(nbytes: int) -> str:
    return f"{nbytes / 2**20:.3f} MiB" if nbytes >= 2**20 else f"{nbytes / 1024:.1f} KiB"


def report_markdown(report: dict) -> str:
    """The human-readable report.md."""
    cfg = report["config"]
    lines = [f"# BQQ export report: {Path(report['model']).name}", "",
             f"- source: `{report['model']}` ({report['model_kind']}), target `{report['target']}`",
             f"- quantiser: {cfg['bits']} bits (stacks), group {cfg['group_size']}, "
             f"rank scale {cfg['rank_scale']}, {cfg['steps']} steps, seed {cfg['seed']}"
             + (f", calibrated on {report['calibration']['samples']} rows from "
                f"`{report['calibration']['file']}`" if report.get("calibration") else ", data-free"),
             "- inputs: " + ", ".join(f"`{i['name']}` {i['shape']} {i['dtype']}" for i in report["inputs"]),
             "- time: " + ", ".join(f"{k} {v:.1f} s" for k, v in report["timings_s"].items()), ""]
    sizes = report["sizes"]
    lines += ["## Sizes", "",
              "| file | bytes | vs fp32 ONNX |", "|---|---|---|"]
    for name, nbytes in sizes["files"].items():
        lines.append(f"| {name} | {_mb(nbytes)} | {nbytes / sizes['files']['original fp32 ONNX']:.3f}x |")
    q = sizes["quantised_layers"]
    lines += ["", f"Quantised layers: {_mb(q['bqq_bytes'])} of packed bits and scales in the ONNX "
                  f"file vs {_mb(q['fp16_bytes'])} for the same weights in fp16: "
                  f"**{q['ratio_vs_fp16']:.4f}x** ({q['bits_per_weight']:.3f} bits per weight; "
                  "biases excluded on both sides).", ""]
    lines += ["## Layers", "",
              "| layer | ONNX node | shape [M, K] | bits/weight | weight MSE | rel. MSE | BQQ node |",
              "|---|---|---|---|---|---|---|"]
    for layer in report["layers"]:
        lines.append(f"| `{layer['layer']}` | `{layer['onnx_node']}` | {layer['shape']} | "
                     f"{layer['bits_per_weight']:.3f} | {layer['weight_mse']:.4g} | "
                     f"{layer['relative_mse']:.4g} | `{layer['bqq_node']}` |")
    if report.get("skipped"):
        lines += ["", "Left in floating point: " + ", ".join(
            f"`{s['layer']}` ({s['reason']})" for s in report["skipped"])]
    validation = report.get("validation") or {}
    if validation:
        lines += ["", "## Accuracy (ONNX Runtime, model.onnx)", ""]
        for key, title in (("vs_bqq_reference", "Against the float model with the same "
                            "dequantised weights (implementation parity)"),
                           ("vs_original", "Against the original model (quantisation error)")):
            if key in validation:
                lines += [f"### {title}", "", f"Reference: {validation[key + '_kind']}.", "",
                          validation[key]["markdown"]]
    latency = report.get("latency") or {}
    if latency:
        lines += ["## Latency (ONNX Runtime, CPU)", "",
                  "| model | batch | p50 ms | p90 ms | p99 ms |", "|---|---|---|---|---|"]
        for name, lat in latency.items():
            lines.append(f"| {name} | {lat['batch_size']} | {lat['p50_ms']:.3f} | "
                         f"{lat['p90_ms']:.3f} | {lat['p99_ms']:.3f} |")
        lines.append("")
    if report.get("engine"):
        lines += ["## TensorRT", "", report["engine"]["message"], ""]
    lines += ["## Name mapping", "", "Each BQQ node and initializer is named after the layer "
              "(`<layer>.BQQMatMul`, `<layer>.bqq.y_bits`, ...); the ONNX node and weight it "
              "replaced are listed per layer in report.json (`layers[].onnx_node`, "
              "`onnx_weight`, `bias_node`).", ""]
    return "\n".join(lines)
