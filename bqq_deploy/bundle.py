"""A bundle directory (docs/ONNX.md): the one place that knows its file names, and the
readers and writers of its JSON files (report, TensorRT manifest, engine build settings).
A new bundle is written atomically: built in a temporary directory next to its destination
and renamed into place when complete."""

from __future__ import annotations

import json
import os
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from .atomic import atomic_directory, atomic_write_bytes, atomic_write_json, scratch_directory
from .errors import InputError
from .report import ExportReport
from .specs import TensorSpec


@dataclass
class BuildSettings:
    """engine_build.json: the input profile and workspace limit a later engine build uses."""

    inputs: list[TensorSpec]
    workspace_mb: int | None = None

    def to_dict(self) -> dict:
        return {"inputs": [spec.to_dict() for spec in self.inputs], "workspace_mb": self.workspace_mb}


class Bundle:
    """The files of one exported model."""

    PORTABLE_ONNX = "model.onnx"  # BQQ ops as model-local functions: any ONNX Runtime
    PORTABLE_ONNX_FP16 = "model.fp16.onnx"  # the same with fp16 activations
    TRT_ONNX = "model.trt.onnx"  # BQQ ops as TensorRT plugin nodes, fp32 activations
    TRT_ONNX_FP16 = "model.trt.fp16.onnx"  # the same with fp16 activations
    LAYERS = "layers.bqq.safetensors"  # packed layers; also the ONNX files' external data
    WEIGHTS = "weights.bin"  # the ONNX files' other large tensors (external data), once each
    REPORT = "report.json"
    REPORT_MD = "report.md"
    README = "README.md"
    ENGINE = "model.engine"
    MANIFEST = "manifest.json"
    BUILD_SETTINGS = "engine_build.json"
    BUILD_SCRIPT = "build_engine.sh"
    PLUGIN_DIR = "plugin"  # native sources to build the plugin on the device

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def __truediv__(self, name: str) -> Path:
        return self.root / name

    # --- writing a new bundle ------------------------------------------------------------

    @staticmethod
    def check_destination(out: str | os.PathLike, force: bool) -> None:
        """Refuse an out that is a file, a non-empty directory (unless force), or one whose
        nearest existing parent is not a writable directory."""
        out = Path(out)
        if out.exists() and not out.is_dir():
            raise InputError(f"{out}: exists and is not a directory")
        ancestor = out.parent
        while not ancestor.exists() and ancestor != ancestor.parent:
            ancestor = ancestor.parent
        if not ancestor.is_dir():
            raise InputError(f"{out}: cannot create it, {ancestor} is not a directory")
        if not os.access(ancestor, os.W_OK | os.X_OK):
            raise InputError(f"{out}: cannot create it, {ancestor} is not writable")
        if out.is_dir() and any(out.iterdir()) and not force:
            raise InputError(f"{out}: directory exists and is not empty (pass --force to replace it)")

    @classmethod
    @contextmanager
    def create(cls, out: str | os.PathLike, force: bool = False) -> Iterator["Bundle"]:
        """A Bundle in a temporary directory next to out; on success it replaces out, on any
        error it is deleted and out is untouched."""
        cls.check_destination(out, force)
        with ExitStack() as stack:
            try:
                staging = stack.enter_context(atomic_directory(out))
            except OSError as exc:  # os.access can say yes where creation fails (read-only mounts)
                raise InputError(f"{out}: cannot create it ({exc.strerror or exc})") from None
            yield cls(staging)
            cls.check_destination(out, force)  # still true after the (long) export?

    @staticmethod
    @contextmanager
    def workspace(out: str | os.PathLike) -> Iterator[Path]:
        """A temporary working directory next to out, for an export's large intermediate
        files: on the bundle's file system (a tmpfs /tmp would hold them in memory), removed
        when the block ends, or by the next export to out if this process is killed."""
        with ExitStack() as stack:
            try:
                path = stack.enter_context(scratch_directory(out))
            except OSError as exc:
                raise InputError(f"{out}: cannot create it ({exc.strerror or exc})") from None
            yield path

    # --- reading and writing its JSON files ------------------------------------------------

    def _read_json(self, name: str):
        path = self / name
        if not path.is_file():
            return None
        try:  # ValueError covers bad UTF-8, bad JSON and integers too long to parse
            return json.loads(path.read_bytes())
        except (ValueError, RecursionError) as exc:
            raise InputError(f"{path}: not valid JSON ({exc})") from None

    def read_report(self) -> ExportReport | None:
        data = self._read_json(self.REPORT)
        if data is None:
            return None
        try:
            return ExportReport.from_dict(data)
        except InputError as exc:
            raise InputError(f"{self / self.REPORT}: {exc}") from None

    def write_report(self, report: ExportReport) -> None:
        """report.json and report.md."""
        atomic_write_json(self / self.REPORT, report.to_dict())
        atomic_write_bytes(self / self.REPORT_MD, [report.to_markdown().encode()])

    def read_manifest(self) -> dict | None:
        manifest = self._read_json(self.MANIFEST)
        if manifest is not None and not isinstance(manifest, dict):
            raise InputError(f"{self / self.MANIFEST}: not a JSON object")
        return manifest

    def write_manifest(self, manifest: dict) -> None:
        atomic_write_json(self / self.MANIFEST, manifest)

    def read_build_settings(self) -> BuildSettings:
        data = self._read_json(self.BUILD_SETTINGS)
        path = self / self.BUILD_SETTINGS
        if data is None:
            raise InputError(f"{path} is missing: pass the input shapes (re-export the bundle)")
        if not isinstance(data, dict) or not isinstance(data.get("inputs"), list):
            raise InputError(f"{path}: expected {{\"inputs\": [...], \"workspace_mb\": ...}}")
        workspace = data.get("workspace_mb")
        if workspace is not None and (type(workspace) is not int or workspace < 1):
            raise InputError(f"{path}: workspace_mb must be a positive integer, got {workspace!r}")
        try:
            return BuildSettings([TensorSpec.from_dict(entry) for entry in data["inputs"]], workspace)
        except InputError as exc:
            raise InputError(f"{path}: {exc}") from None

    def write_build_settings(self, settings: BuildSettings) -> None:
        atomic_write_json(self / self.BUILD_SETTINGS, settings.to_dict())

    def trt_onnx(self, precision: str = "auto") -> Path:
        """The TensorRT ONNX file for precision "fp16", "fp32" or "auto" (fp16 when present)."""
        names = {"fp16": [self.TRT_ONNX_FP16], "fp32": [self.TRT_ONNX],
                 "auto": [self.TRT_ONNX_FP16, self.TRT_ONNX]}.get(precision)
        if names is None:
            raise InputError(f"precision must be auto, fp16 or fp32, got {precision!r}")
        for name in names:
            if (self / name).is_file():
                return self / name
        raise InputError(f"{self.root} has no {' or '.join(names)} (export it with "
                         "`bqq-export ... --target trt`)")
