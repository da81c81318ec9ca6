"""The device kit: what a bundle needs to build its engine on the target device (a Jetson):
the native sources in plugin/, engine_build.json, build_engine.sh and a README section.
The script and the README text are templates in templates/ (@NAME@ placeholders)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Sequence

from ..atomic import atomic_directory, atomic_write_bytes
from ..bundle import Bundle, BuildSettings
from ..errors import EngineError
from ..specs import TensorSpec
from .plugin import BUILD_SUBDIR, PLUGIN_LIBRARY, repo_root

TEMPLATES = Path(__file__).resolve().parent / "templates"
README_BEGIN = "<!-- bqq-engine: begin -->"
README_END = "<!-- bqq-engine: end -->"
# Native sources copied into a bundle, relative to the repository root (its top-level
# CMakeLists.txt builds them; runtime/ brings the bqq-infer sample app).
NATIVE_SOURCES = ("CMakeLists.txt", "cmake", "plugins", "runtime")
# The plugin library as built by build_engine.sh, relative to the bundle.
PLUGIN_IN_BUNDLE = f"{Bundle.PLUGIN_DIR}/{BUILD_SUBDIR.as_posix()}/{PLUGIN_LIBRARY}"


def _render(template: str, **values: str) -> str:
    text = (TEMPLATES / template).read_text()
    for key, value in values.items():
        text = text.replace(f"@{key}@", value)
    left = re.findall(r"@[A-Z_0-9]+@", text)
    if left:
        raise AssertionError(f"template {template}: no value for {', '.join(sorted(set(left)))}")
    return text


def _shape_arg(specs: Sequence[TensorSpec], which: str) -> str:
    return ",".join(f"{s.name}:{'x'.join(map(str, getattr(s, which)))}" for s in specs)


def trtexec_command(specs: Sequence[TensorSpec], plugin: str = PLUGIN_IN_BUNDLE,
                    onnx_name: str = Bundle.TRT_ONNX_FP16) -> str:
    """The trtexec line that builds the same engine as bqq-build (specs with profiles)."""
    return (f"trtexec --onnx={onnx_name} --dynamicPlugins={plugin} --stronglyTyped "
            f"--minShapes={_shape_arg(specs, 'min')} --optShapes={_shape_arg(specs, 'opt')} "
            f"--maxShapes={_shape_arg(specs, 'max')} --saveEngine={Bundle.ENGINE}")


def write_device_kit(bundle: Bundle, settings: BuildSettings, *,
                     source_root: Path | None = None) -> list[Path]:
    """Make the bundle buildable on the target: the native sources in plugin/ (replaced as a
    whole), engine_build.json, build_engine.sh and the README section (other README text is
    kept). settings.inputs must carry profiles. Returns the paths written."""
    source_root = Path(source_root or repo_root())
    missing = [rel for rel in NATIVE_SOURCES if not (source_root / rel).exists()]
    if missing or not (source_root / "plugins/bqq_matmul/CMakeLists.txt").is_file():
        raise EngineError(f"plugin sources not found under {source_root} (missing: "
                          f"{', '.join(missing) or 'plugins/bqq_matmul/CMakeLists.txt'}); the "
                          "device kit needs a source checkout (pip install -e .)")
    ignore = shutil.ignore_patterns("build", "build-*", "__pycache__", "*.o", "*.so", ".*")
    with atomic_directory(bundle / Bundle.PLUGIN_DIR) as staging:
        for rel in NATIVE_SOURCES:
            src, dst = source_root / rel, staging / rel
            if src.is_dir():
                shutil.copytree(src, dst, ignore=ignore)
            else:
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dst)
    bundle.write_build_settings(settings)
    specs, onnx_name = settings.inputs, bundle.trt_onnx("auto").name
    common = {"PLUGIN_DIR": Bundle.PLUGIN_DIR, "PLUGIN": PLUGIN_IN_BUNDLE}
    script = bundle / Bundle.BUILD_SCRIPT
    atomic_write_bytes(script, [_render(
        "build_engine.sh", TRT_ONNX=Bundle.TRT_ONNX, TRT_ONNX_FP16=Bundle.TRT_ONNX_FP16,
        TRTEXEC_COMMAND=trtexec_command(specs, onnx_name='"$precision_file"'), **common).encode()])
    script.chmod(0o755)
    section = _render("README_section.md", ENGINE=Bundle.ENGINE,
                      TRTEXEC_COMMAND=trtexec_command(specs, onnx_name=onnx_name),
                      PROFILE="; ".join(f"`{s.name}` {list(s.min)} / {list(s.opt)} / {list(s.max)}"
                                        for s in specs), **common)
    readme = bundle / Bundle.README
    atomic_write_bytes(readme, [_with_readme_section(readme, section).encode()])
    return [bundle / Bundle.PLUGIN_DIR, bundle / Bundle.BUILD_SETTINGS, script, readme]


def _with_readme_section(readme: Path, section: str) -> str:
    """The README text with our section (between the markers) replaced or appended."""
    section = f"{README_BEGIN}\n{section.rstrip()}\n{README_END}"
    text = readme.read_text() if readme.is_file() else "# BQQ deployment bundle\n"
    if README_BEGIN in text and README_END in text:
        head, rest = text.split(README_BEGIN, 1)
        return head + section + rest.split(README_END, 1)[1]
    return text.rstrip("\n") + "\n\n" + section + "\n"
