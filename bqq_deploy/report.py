"""What an export did, as one typed, versioned record: ExportReport (written to report.json
by to_dict, read back by from_dict) and its human-readable form (report.md)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from .errors import InputError

REPORT_VERSION = 1


@dataclass
class LayerEntry:
    """One quantised layer: where it came from in the graph and how well it was fit."""

    layer: str  # the name it goes by (torch parameter or ONNX initializer)
    onnx_node: str
    onnx_op: str
    onnx_weight: str
    bias_node: str | None
    onnx_bias: str | None
    shape: list[int]  # [M, K]
    group: list[int]
    rank: int
    stacks: int
    bits_per_weight: float
    weight_mse: float
    relative_mse: float
    bqq_node: str
    initializers: list[str]
    solver: dict = field(default_factory=dict)
    shared_nodes: list[str] = field(default_factory=list)  # further nodes reading this weight


@dataclass
class SkippedLayer:
    layer: str
    onnx_node: str
    reason: str


@dataclass
class EngineOutcome:
    """The TensorRT step: "engine" (built here, manifest set) or "bundle" (to build on the
    device), and what to tell the user."""

    status: str
    message: str
    manifest: dict | None = None


@dataclass
class ExportReport:
    model: str
    model_kind: str
    target: str
    config: dict
    inputs: list[dict]
    files: dict[str, str]
    layers: list[LayerEntry]
    skipped: list[SkippedLayer] = field(default_factory=list)
    calibration: dict | None = None  # {"file", "samples"}
    timings_s: dict[str, float] = field(default_factory=dict)
    peak_rss_mib: dict[str, float] = field(default_factory=dict)  # per stage, as timings_s
    sizes: dict = field(default_factory=dict)  # {"files": {name: bytes}, "quantised_layers": {...}}
    validation: dict = field(default_factory=dict)
    latency: dict = field(default_factory=dict)
    engine: EngineOutcome | None = None
    shape_ranges: str = ""  # the inputs' profile ranges, and whether they are the defaults
    verdict: dict = field(default_factory=dict)  # {"status", "passed", "note", "failures", ...}
    warnings: list[str] = field(default_factory=list)  # one line per distinct warning
    version: int = REPORT_VERSION

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ExportReport":
        """The report of to_dict (e.g. report.json); InputError when it is not one."""
        if not isinstance(data, dict) or data.get("version") != REPORT_VERSION:
            version = data.get("version") if isinstance(data, dict) else None
            raise InputError(f"not a bqq-export report of version {REPORT_VERSION} "
                             f"(version {version!r})")
        try:
            known = {f.name for f in fields(cls)}
            values = {key: value for key, value in data.items() if key in known}
            values["layers"] = [LayerEntry(**entry) for entry in data["layers"]]
            values["skipped"] = [SkippedLayer(**entry) for entry in data.get("skipped") or []]
            if data.get("engine"):
                values["engine"] = EngineOutcome(**data["engine"])
            return cls(**values)
        except (KeyError, TypeError) as exc:
            raise InputError(f"malformed bqq-export report ({exc})") from None

    @property
    def passed(self) -> bool:
        """The verdict: parity held and every tolerance set was met (True before validation)."""
        return self.verdict.get("passed", True)

    @property
    def quantised(self) -> dict:
        """Sizes of the quantised layers: weights, bqq_bytes, fp16_bytes, ratio_vs_fp16,
        bits_per_weight."""
        return self.sizes["quantised_layers"]

    def to_markdown(self) -> str:
        """report.md."""
        cfg = self.config
        lines = [f"# BQQ export report: {Path(self.model).name}", "",
                 f"- source: `{self.model}` ({self.model_kind}), target `{self.target}`",
                 f"- quantiser: {cfg['bits']} bits (stacks), group {cfg['group_size']}, "
                 f"rank scale {cfg['rank_scale']}, {cfg['steps']} steps, seed {cfg['seed']}"
                 + (f", calibrated on {self.calibration['samples']} rows from "
                    f"`{self.calibration['file']}`" if self.calibration else ", data-free"),
                 "- inputs: " + ", ".join(f"`{i['name']}` {i['shape']} {i['dtype']}" for i in self.inputs),
                 *([f"- shape ranges (min..max, opt): {self.shape_ranges}"] if self.shape_ranges else []),
                 "- time: " + ", ".join(f"{k} {v:.1f} s" + (f" (peak RSS {self.peak_rss_mib[k]:.0f} MiB)"
                                                            if k in self.peak_rss_mib else "")
                                        for k, v in self.timings_s.items()), ""]
        files = self.sizes["files"]
        fp32, fp16 = files["original fp32 ONNX"], files["original fp16 ONNX (estimate)"]
        lines += ["## Sizes", "", "What each file needs, external data included (the ONNX files "
                  "share layers.bqq.safetensors and weights.bin, so a bundle holds each weight once).",
                  "", "| file | bytes | vs fp32 ONNX | vs fp16 ONNX |", "|---|---|---|---|"]
        for name, nbytes in [*files.items(), ("whole bundle", self.sizes["bundle_bytes"])]:
            lines.append(f"| {name} | {_mb(nbytes)} | {nbytes / fp32:.3f}x | {nbytes / fp16:.3f}x |")
        q = self.quantised
        lines += ["", f"Quantised layers: {_mb(q['bqq_bytes'])} of packed bits and scales in the ONNX "
                      f"file vs {_mb(q['fp16_bytes'])} for the same weights in fp16: "
                      f"**{q['ratio_vs_fp16']:.4f}x** ({q['bits_per_weight']:.3f} bits per weight; "
                      "biases excluded on both sides).", ""]
        mix: dict[int, int] = {}
        for layer in self.layers:
            mix[layer.stacks] = mix.get(layer.stacks, 0) + 1
        lines += ["## Layers", "",
                  "Stacks: " + ", ".join(f"{mix[p]} layer(s) with {p}" for p in sorted(mix))
                  + (" (per layer below: embedding tables take --embedding-bits, and bits such as "
                     "2.5 are a budget)." if len(mix) > 1 else "."), "",
                  "| layer | ONNX node | shape [M, K] | stacks | bits/weight | weight MSE | rel. MSE | BQQ node |",
                  "|---|---|---|---|---|---|---|---|"]
        for layer in self.layers:
            lines.append(f"| `{layer.layer}` | `{layer.onnx_node}` | {layer.shape} | {layer.stacks} | "
                         f"{layer.bits_per_weight:.3f} | {layer.weight_mse:.4g} | "
                         f"{layer.relative_mse:.4g} | `{layer.bqq_node}` |")
        if self.skipped:
            lines += ["", "Left in floating point: " + ", ".join(
                f"`{s.layer}` ({s.reason})" for s in self.skipped)]
        if self.validation:
            lines += ["", "## Accuracy (ONNX Runtime, model.onnx)", ""]
            if self.verdict:
                lines += [f"**Verdict: {self.verdict['status']}** ({self.verdict['note']}).", ""]
                lines += [f"- {failure}" for failure in self.verdict["failures"]]
            inputs = self.validation.get("inputs", {})
            lines += ["", "Checked on: " + _inputs_text(inputs) + ".", ""]
            for key, title in (("vs_bqq_reference", "Against the float model with the same "
                                "dequantised weights (implementation parity)"),
                               ("vs_original", "Against the original model (quantisation error)")):
                if key in self.validation:
                    lines += [f"### {title}", "", f"Reference: {self.validation[key + '_kind']}.", "",
                              self.validation[key]["markdown"]]
        if self.latency:
            lines += ["## Latency (ONNX Runtime, CPU)", "",
                      "| model | batch | p50 ms | p90 ms | p99 ms |", "|---|---|---|---|---|"]
            for name, lat in self.latency.items():
                lines.append(f"| {name} | {lat['batch_size']} | {lat['p50_ms']:.3f} | "
                             f"{lat['p90_ms']:.3f} | {lat['p99_ms']:.3f} |")
            lines.append("")
        if self.engine is not None:
            lines += ["## TensorRT", "", self.engine.message, ""]
        if self.warnings:
            lines += ["## Warnings", ""] + [f"- {w}" for w in self.warnings] + [""]
        lines += ["## Name mapping", "", "Each BQQ node and initializer is named after the layer "
                  "(`<layer>.BQQMatMul`, `<layer>.bqq.y_bits`, ...); the ONNX node and weight it "
                  "replaced are listed per layer in report.json (`layers[].onnx_node`, "
                  "`onnx_weight`, `bias_node`).", ""]
        return "\n".join(lines)


def _inputs_text(inputs: dict) -> str:
    """What the checks ran on, from validation["inputs"]."""
    source = inputs.get("source", "none")
    if source == "none":
        return "probe inputs only (random floats, integer inputs all 1) - " + inputs.get("note", "")
    where = f" from `{inputs['file']}`" if inputs.get("file") else ""
    rule = f"; {inputs['rule']}" if inputs.get("rule") else ""
    return f"{source}: {inputs.get('samples')} samples{where}{rule}"


def _mb(nbytes: int) -> str:
    return f"{nbytes / 2**20:.3f} MiB" if nbytes >= 2**20 else f"{nbytes / 1024:.1f} KiB"
