"""Seed corpora of every fuzz harness, generated rather than committed: valid inputs (and a
few near-valid ones) that the mutators start from.

    python fuzz/seeds.py OUT_DIR [NAME ...]     # OUT_DIR/NAME/seed-NNN, default: all

Native harnesses (fuzz_*.cpp) read their folder as a libFuzzer corpus; the Python harness
(fuzz/pyfuzz.py) calls the functions directly. Deterministic: the same bytes on every run
(fixed seeds, no timestamps), so a seeded fuzz pass repeats exactly.
"""

from __future__ import annotations

import io
import json
import struct
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


# --- native harnesses -----------------------------------------------------------------

def npy_seeds() -> list[bytes]:
    """NumPy's own files (versions 1-3, each dtype the reader knows, 0-d and empty arrays)
    and a few it must reject (Fortran order, big-endian, object)."""
    out = []
    rng = np.random.default_rng(0)
    for version in ((1, 0), (2, 0), (3, 0)):
        for dtype, shape in (("<f4", (3, 4)), ("<f2", (5,)), ("<i8", ()), ("|u1", (0, 3)),
                             ("|b1", (2, 2, 2)), ("<u4", (1, 7))):
            buf = io.BytesIO()
            np.lib.format.write_array(buf, (rng.standard_normal(shape) * 9).astype(dtype), version=version)
            out.append(buf.getvalue())
    for array in (np.asfortranarray(np.ones((2, 3), np.float32)), np.ones(3, ">f4")):
        buf = io.BytesIO()
        np.lib.format.write_array(buf, array)
        out.append(buf.getvalue())
    out.append(b"\x93NUMPY\x01\x00" + struct.pack("<H", 54)
               + b"{'descr': '<i4', 'fortran_order': False, 'shape': (2L,), }\n" + bytes(8))
    return out


def layout_seeds() -> list[bytes]:
    """fuzz_layout.cpp input: M, K, g_r, g_c, l, p as int32, a row-count byte, buffer bytes."""
    layouts = [(48, 64, 16, 16, 8, 2), (1, 1, 1, 1, 1, 1), (10, 7, 4, 3, 33, 3),
               (64, 64, 64, 64, 32, 2), (5, 300, 4096, 1, 4096, 16), (7, 9, 2, 5, 64, 1),
               # the largest M and K, counts near 2**63 (a field edit away from the edge)
               (2**31 - 1, 2**31 - 1, 64, 64, 32, 1), (2**31 - 1, 2**31 - 1, 4096, 4096, 4096, 16)]
    fill = bytes(range(0, 256, 7))
    return [struct.pack("<6i", *fields) + bytes([rows]) + fill
            for fields in layouts for rows in (2, 3)]


# The creator harness's encoding (fuzz_plugin_creator.cpp): a phase byte, then records of
# [name selector][PluginFieldType][int32 length][payload]; selector < 7 names a known field.
_FIELD_VALUES = (48, 64, 16, 16, 8, 2, 1)  # out_features .. stacks, format_version
_INT32 = 5  # nvinfer1::PluginFieldType::kINT32


def plugin_creator_seeds() -> list[bytes]:
    def record(selector, value, ftype=_INT32, length=1):
        return bytes([selector, ftype]) + struct.pack("<i", length) + struct.pack("<i", value)

    valid = b"".join(record(i, v) for i, v in enumerate(_FIELD_VALUES))
    shuffled = b"".join(record(i, v) for i, v in reversed(list(enumerate(_FIELD_VALUES))))
    # The flags byte's high nibble picks the creator: 0 BQQMatMul, 1 BQQGather (same fields).
    return [bytes([creator | phase]) + fields for creator in (0x00, 0x10) for phase, fields in (
        (0, valid), (1, valid), (0, shuffled),
        (1, valid + record(7, 5)),  # plus an unknown field
        (0, valid[:-10]),  # format_version missing
        (0, valid + record(0, 48)))]  # out_features twice


# --- Python harnesses ---------------------------------------------------------------

def _api():
    sys.path.insert(0, str(HERE))
    import project_api

    return project_api


def safetensors_seeds() -> list[bytes]:
    """BQQ files written by save_layers: one and two layers, with and without bias, ranks
    that fill and do not fill the last word."""
    import tempfile

    import torch

    api = _api()
    gen = torch.Generator().manual_seed(0)

    def weight(M, K, g_r, g_c, rank, stacks, bias):
        R, C = -(-M // g_r), -(-K // g_c)
        y = torch.randint(0, 2, (stacks, R, C, g_r, rank), generator=gen)
        z = torch.randint(0, 2, (stacks, R, C, g_c, rank), generator=gen)
        scales = (0.1 * torch.randn(stacks, R, C, 4, generator=gen)).half()
        b = torch.randn(M, generator=gen) if bias else None
        return api.BQQWeight(M, K, g_r, g_c, rank, api.pack_bits(y), api.pack_bits(z), scales, b)

    sets = [{"fc": weight(6, 10, 4, 4, 3, 2, True)},
            {"a": weight(5, 3, 2, 2, 32, 1, False), "b.c": weight(3, 9, 8, 4, 33, 2, True)},
            {"x": weight(1, 1, 1, 1, 1, 1, False)}]
    out = []
    with tempfile.TemporaryDirectory() as scratch:
        for i, layers in enumerate(sets):
            path = Path(scratch) / f"{i}.bqq.safetensors"
            api.save_layers(path, layers)
            out.append(path.read_bytes())
    return out


def _npz(arrays: dict, compressed: bool = False) -> bytes:
    buf = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buf, **arrays)
    return buf.getvalue()


# Input specs the .npz harness loads against: one float input, two integer inputs.
NPZ_SPECS = ((("x", ("n", 48), "float32"),),
             (("ids", ("batch", 16), "int64"), ("mask", ("batch", 16), "bool")))


def npz_seeds() -> list[bytes]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 48)).astype(np.float32)
    ids = rng.integers(0, 9, (3, 16))
    return [_npz({"x": x}), _npz({"arr_0": x[:2]}, compressed=True),
            _npz({"ids": ids, "mask": ids > 4}), _npz({"ids": ids, "mask": ids > 4}, compressed=True),
            _npz({"x": x.astype(np.float64), "extra": np.arange(3)})]


def input_shape_seeds() -> list[bytes]:
    return [s.encode() for s in ("2x16x128", "1x3x224x224", "ids:1x128:int64", "mask:1x128:bool",
                                 "x:4x48", "image:2x1x8x8:float16", "8", "input_1:3x5:int32")]


def onnx_seeds() -> list[bytes]:
    """Small models of the shapes bqq-export meets: MatMul + Add, Gemm with a dynamic
    batch, two inputs, an integer input."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)

    def init(name, shape):
        return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)

    def model(nodes, inputs, outputs, inits, opset=18):
        graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="bqq-fuzz-seeds")
        m.ir_version = 9
        return m.SerializeToString()

    f = TensorProto.FLOAT
    mlp = model([helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Add", ["h", "b"], ["y"])],
                [helper.make_tensor_value_info("x", f, ["n", 48])],
                [helper.make_tensor_value_info("y", f, ["n", 16])], [init("w", (48, 16)), init("b", (16,))])
    gemm = model([helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1)],
                 [helper.make_tensor_value_info("x", f, [2, 8])],
                 [helper.make_tensor_value_info("y", f, [2, 4])], [init("w", (4, 8)), init("b", (4,))], opset=13)
    two = model([helper.make_node("Add", ["a", "c"], ["s"]), helper.make_node("MatMul", ["s", "w"], ["y"])],
                [helper.make_tensor_value_info("a", f, ["batch", 3, 8]),
                 helper.make_tensor_value_info("c", f, ["batch", 3, 8])],
                [helper.make_tensor_value_info("y", f, ["batch", 3, 5])], [init("w", (8, 5))])
    ints = model([helper.make_node("Cast", ["ids"], ["h"], to=f), helper.make_node("MatMul", ["h", "w"], ["y"])],
                 [helper.make_tensor_value_info("ids", TensorProto.INT64, ["n", 6])],
                 [helper.make_tensor_value_info("y", f, ["n", 2])], [init("w", (6, 2))])
    onnx.checker.check_model(onnx.load_from_string(mlp))
    return [mlp, gemm, two, ints]


class TinyNet:
    """A model for the torch loaders: flatten, Linear(in_features, 10)."""

    @staticmethod
    def make(in_features: int = 64):
        import torch

        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(in_features, 10)).eval()


def pt2_seeds() -> list[bytes]:
    """torch.export programs: a fixed batch, a dynamic batch, an int64 input, a float64 input."""
    import tempfile

    import torch

    class Emb(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(10, 4)
            self.fc = torch.nn.Linear(4, 3)

        def forward(self, ids):
            return self.fc(self.emb(ids))

    torch.manual_seed(0)
    cases = [(TinyNet.make(), (torch.zeros(2, 1, 8, 8),), None),
             (TinyNet.make(), (torch.zeros(2, 1, 8, 8),), ({0: torch.export.Dim("batch", min=1)},)),
             (Emb().eval(), (torch.zeros(2, 5, dtype=torch.int64),), None),
             (TinyNet.make().double(), (torch.zeros(2, 1, 8, 8, dtype=torch.float64),), None)]
    out = []
    with tempfile.TemporaryDirectory() as scratch:
        for i, (module, args, dynamic) in enumerate(cases):
            program = torch.export.export(module, args, dynamic_shapes=dynamic)
            path = Path(scratch) / f"{i}.pt2"
            torch.export.save(program, str(path))
            out.append(path.read_bytes())
    return out


def torchscript_model_bytes() -> bytes:
    """The fixed TorchScript model the sidecar harness loads (input [batch, 1, 8, 8])."""
    import torch

    buf = io.BytesIO()
    torch.jit.save(torch.jit.script(TinyNet.make()), buf)
    return buf.getvalue()


def sidecar_seeds() -> list[bytes]:
    image = {"name": "image", "shape": ["batch", 1, 8, 8], "dtype": "float32"}
    return [json.dumps(doc).encode() for doc in (
        {"input": image, "output": {"name": "logits", "shape": ["batch", 10]}},
        {"inputs": [image], "outputs": [{"name": "logits"}]},
        {"input": {"shape": [2, 64]}},
        json.loads((HERE.parent / "models" / "digits_vit.json").read_text()))]


# The device and TensorRT version the manifest harness checks against, and the plugin
# library file whose sha256 a matching manifest names.
MANIFEST_DEVICE = {"name": "Orin", "compute_capability": "8.7"}
MANIFEST_TRT = "10.3.0"
PLUGIN_BYTES = b"\x7fELF not really a plugin library"


def manifest_seeds() -> list[bytes]:
    import hashlib

    good = {"manifest_version": 1, "engine": "model.engine", "engine_sha256": "0" * 64,
            "source_onnx": "model.trt.fp16.onnx", "precision": "fp16",
            "tensorrt_version": MANIFEST_TRT + ".30", "gpu": MANIFEST_DEVICE,
            "plugin": {"library": "libbqq_trt_plugin.so", "sha256": hashlib.sha256(PLUGIN_BYTES).hexdigest()},
            "inputs": [{"name": "image", "dtype": "float32", "min": [1, 1, 8, 8], "opt": [1, 1, 8, 8],
                        "max": [8, 1, 8, 8]}],
            "outputs": ["logits"], "bqq": {"model": "m.pt"}, "built_at": "2025-01-01T00:00:00+00:00"}
    other_gpu = dict(good, gpu={"name": "H100", "compute_capability": "9.0"})
    other_trt = dict(good, tensorrt_version="10.7.0")
    return [json.dumps(doc, indent=2, sort_keys=True).encode() for doc in (good, other_gpu, other_trt)]


def engine_build_seeds() -> list[bytes]:
    profile = {"name": "image", "dtype": "float32", "min": [1, 1, 8, 8], "opt": [1, 1, 8, 8], "max": [8, 1, 8, 8]}
    return [json.dumps(doc, indent=2, sort_keys=True).encode() for doc in (
        {"inputs": [profile], "workspace_mb": None},
        {"inputs": [profile, dict(profile, name="mask", dtype="bool")], "workspace_mb": 1024},
        {"inputs": [{"name": "ids", "dtype": "int64", "shape": ["batch", 128]}]})]


# libFuzzer dictionaries of the native harnesses (fuzz/driver.cpp reads them too).
DICTIONARIES = {"npy": HERE / "npy.dict", "layout": HERE / "int32.dict", "plugin_creator": HERE / "int32.dict"}

SEEDS = {"npy": npy_seeds, "layout": layout_seeds, "plugin_creator": plugin_creator_seeds,
         "safetensors": safetensors_seeds, "npz": npz_seeds, "input_shape": input_shape_seeds,
         "onnx": onnx_seeds, "pt2": pt2_seeds, "sidecar": sidecar_seeds,
         "manifest": manifest_seeds, "engine_build": engine_build_seeds}


def write(out_dir: Path, names=None) -> dict[str, Path]:
    """Write OUT_DIR/NAME/seed-NNN for each name; returns the folders."""
    folders = {}
    for name in names or SEEDS:
        folder = Path(out_dir) / name
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("seed-*"):
            old.unlink()
        for i, data in enumerate(SEEDS[name]()):
            (folder / f"seed-{i:03d}").write_bytes(data)
        folders[name] = folder
    return folders


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help") or any(n not in SEEDS for n in argv[1:]):
        print(__doc__.strip() + "\n\nnames: " + " ".join(SEEDS), file=sys.stderr)
        return 2
    for name, folder in write(Path(argv[0]), argv[1:]).items():
        print(f"{name}: {len(list(folder.iterdir()))} seeds in {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
