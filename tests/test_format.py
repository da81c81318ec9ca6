"""Packed format v1 (docs/FORMAT.md): exact bit round trips, safetensors files read by the
real safetensors parser, and one rejection test per kind of corrupt file."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from bqq_deploy.errors import FormatError
from bqq_deploy.format import load_layers, pack_bits, save_layers, unpack_bits
from bqq_deploy.layout import words_per_row


@pytest.mark.parametrize("rank", [1, 7, 31, 32, 33, 48, 64, 95])
def test_pack_unpack_round_trip_is_bit_exact(rank):
    bits = torch.randint(0, 2, (3, 5, rank), generator=torch.Generator().manual_seed(rank))
    words = pack_bits(bits)
    assert words.dtype == torch.int32 and words.shape == (3, 5, words_per_row(rank))
    assert torch.equal(unpack_bits(words, rank), bits.to(torch.uint8))


def test_bit_positions_follow_the_spec():
    # Bit q -> word q // 32, bit q % 32, LSB first; bit 31 makes the int32 negative.
    bits = torch.zeros(40, dtype=torch.uint8)
    bits[[0, 31, 33]] = 1
    words = pack_bits(bits)
    assert words.tolist() == [1 - 2**31, 2]
    assert pack_bits(torch.ones(32, dtype=torch.uint8)).tolist() == [-1]


def test_save_load_round_trip_and_real_safetensors_parser(tmp_path, make_weight):
    layers = {"blocks.0.fc1": make_weight(70, 100, 32, 48, 20, 3),
              "head": make_weight(10, 64, 64, 64, 32, 2, bias=False)}
    path = tmp_path / "m.bqq.safetensors"
    save_layers(path, layers)
    loaded = load_layers(path)
    for name, weight in layers.items():
        for key, tensor in weight.tensors(name).items():
            assert torch.equal(loaded[name].tensors(name)[key], tensor), key
        assert loaded[name].fields == weight.fields
    # The reference safetensors implementation reads the same tensors back.
    parsed = load_file(str(path))
    assert sorted(parsed) == sorted(k for n, w in layers.items() for k in w.tensors(n))
    assert torch.equal(parsed["blocks.0.fc1.y_bits"], layers["blocks.0.fc1"].y_bits)
    assert not list(tmp_path.glob(".*.tmp")), "temporary file left behind"


def _write_raw(path, header: dict, data: bytes) -> None:
    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + data)


def _read_raw(path):
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n]), raw[8 + n:]


@pytest.fixture
def good_file(tmp_path, make_weight):
    path = tmp_path / "good.bqq.safetensors"
    save_layers(path, {"fc": make_weight(40, 72, 32, 32, 20, 2)})
    return path


def _corrupt(path, edit):
    header, data = _read_raw(path)
    edited = edit(header, data)
    _write_raw(path, header, edited if isinstance(edited, bytes) else data)


def _flip_padding_bit(header, data):
    start = header["fc.y_bits"]["data_offsets"][0]
    word = int.from_bytes(data[start:start + 4], "little") | (1 << 25)  # rank 20: bit 25 unused
    return data[:start] + word.to_bytes(4, "little") + data[start + 4:]


def _nan_scale(header, data):
    start = header["fc.scales"]["data_offsets"][0]
    return data[:start] + b"\x00\x7e" + data[start + 2:]  # fp16 NaN


def _gap_before_last_tensor(header, data):
    start, end = header["fc.z_bits"]["data_offsets"]  # the last tensor (keys are sorted)
    header["fc.z_bits"]["data_offsets"] = [start + 4, end + 4]
    return data[:start] + bytes(4) + data[start:]


CORRUPTIONS = {
    "not a bqq file": (lambda h, d: h["__metadata__"].update(format="gguf"), "not a BQQ file"),
    "future version": (lambda h, d: h["__metadata__"].update(format_version="9"), "format_version"),
    "bad layer json": (lambda h, d: h["__metadata__"].update(layers="{"), "not valid JSON"),
    "layers not a string": (lambda h, d: h["__metadata__"].update(layers={"fc": {}}),
                            "layers must be a JSON string"),
    "fractional offsets": (lambda h, d: h["fc.bias"].update(  # int() would truncate these
        data_offsets=[x + 0.9 for x in h["fc.bias"]["data_offsets"]]), "malformed header entry"),
    "shape as a string": (lambda h, d: h["fc.bias"].update(shape="40"), "malformed header entry"),
    "field out of range": (lambda h, d: h["__metadata__"].update(
        layers=json.dumps({"fc": {"M": 40, "K": 72, "g_r": 32, "g_c": 32, "l": 20, "p": 99}})),
        "field p=99"),
    "wrong dtype": (lambda h, d: h["fc.scales"].update(dtype="F32"), "fc.scales: dtype F32"),
    "wrong shape": (lambda h, d: h["fc.z_bits"].update(shape=[2, 2, 3, 32, 2]), "fc.z_bits: shape"),
    "missing tensor": (lambda h, d: h.pop("fc.z_bits"), "fc.z_bits is missing"),
    "unknown tensor": (lambda h, d: h.update({"extra": h["fc.bias"]}), "extra is not part"),
    "span outside data": (lambda h, d: h["fc.bias"].update(
        data_offsets=[len(d) - 8, len(d) + 152]), "outside"),
    "overlapping spans": (lambda h, d: h["fc.bias"].update(  # bias (160 B) over the scales
        data_offsets=[h["fc.scales"]["data_offsets"][0], h["fc.scales"]["data_offsets"][0] + 160]),
        "overlap"),
    # Like safetensors itself: the tensors tile the data section exactly.
    "gap between tensors": (_gap_before_last_tensor, "4 unused bytes between tensor fc.y_bits"),
    "trailing bytes": (lambda h, d: d + bytes(8), "8 trailing bytes"),
    "padding bits set": (_flip_padding_bit, "bits past rank 20"),
    "nan scale": (_nan_scale, "fc.scales: contains inf or NaN"),
}


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_each_kind_of_corrupt_file_is_rejected_by_name(good_file, kind):
    edit, message = CORRUPTIONS[kind]
    _corrupt(good_file, edit)
    with pytest.raises(FormatError, match=message):
        load_layers(good_file)


def test_truncated_file_is_rejected_before_reading(good_file):
    raw = good_file.read_bytes()
    good_file.write_bytes(raw[:-10])
    with pytest.raises(FormatError, match="outside"):
        load_layers(good_file)
    good_file.write_bytes(raw[:5])
    with pytest.raises(FormatError, match="too short"):
        load_layers(good_file)
    good_file.write_bytes(struct.pack("<Q", 10**12) + raw[8:])
    with pytest.raises(FormatError, match="header length"):
        load_layers(good_file)


def test_failed_write_keeps_the_old_file(good_file, make_weight):
    before = good_file.read_bytes()
    bad = make_weight(40, 72, 32, 32, 20, 2)
    bad.scales = bad.scales.float()  # wrong dtype: rejected before anything is written
    with pytest.raises(FormatError, match="fc.scales: dtype"):
        save_layers(good_file, {"fc": bad})
    assert good_file.read_bytes() == before
    assert not list(good_file.parent.glob(".*.tmp"))


def test_dequantize_matches_the_block_formula(make_weight):
    w = make_weight(5, 7, 3, 4, 6, 2)
    y, z = w.y(), w.z()
    a, b, c, d = w.scales.float().unbind(-1)
    dense = w.dequantize()
    # Entry (4, 6) lies in block (1, 1) at local (1, 2); evaluate the sum by hand.
    expected = sum(a[k, 1, 1] * (y[k, 1, 1, 1] * z[k, 1, 1, 2]).sum()
                   + b[k, 1, 1] * y[k, 1, 1, 1].sum() + c[k, 1, 1] * z[k, 1, 1, 2].sum()
                   + d[k, 1, 1] for k in range(2))
    assert dense.shape == (5, 7)
    assert torch.isclose(dense[4, 6], expected, rtol=1e-6)


@pytest.mark.parametrize("shape", [(128, 192, 64, 64, 32, 2),   # no padding: products written in place
                                   (100, 70, 64, 64, 32, 3),    # padded edges
                                   (37, 300, 16, 32, 40, 1)])   # rank across a word boundary
def test_dequantize_writes_every_layout_of_out_alike(make_weight, shape, monkeypatch):
    """dequantize(out=) takes each path the ONNX Runtime loader uses (row-major, a transposed
    view, fp16, and tasks run in any order on separate scratch spaces): all give the block
    formula's W_hat, evaluated here for the whole matrix with torch."""
    from bqq_deploy import format as packed

    w = make_weight(*shape)
    p, R, C, g_r, _ = w.y_bits.shape
    monkeypatch.setattr(packed, "_DEQUANTIZE_CHUNK", C * g_r * w.group_cols)  # a task per block row
    y, z = w.y().double(), w.z().double()
    a, b, c, d = w.scales.double().unbind(-1)  # [p, R, C]
    blocks = (torch.einsum("prcil,prcjl->prcij", y * a[..., None, None], z)
              + (b[..., None] * y.sum(-1))[..., None] + (c[..., None] * z.sum(-1))[..., None, :]
              + d[..., None, None]).sum(0)
    want = blocks.permute(0, 2, 1, 3).reshape(R * g_r, C * w.group_cols)[: w.out_features, : w.in_features]
    # float32 rounding of a sum of about stacks * rank products and four terms
    tol = 1e-5 * float(want.abs().max())
    assert float((w.dequantize().double() - want).abs().max()) <= tol
    transposed = np.zeros((w.in_features, w.out_features), np.float32)
    w.dequantize(out=transposed.T)
    assert float((torch.from_numpy(transposed.T).double() - want).abs().max()) <= tol
    half = np.zeros((w.out_features, w.in_features), np.float16)
    w.dequantize(out=half)
    # fp16: one rounding of each weight (relative 2^-11)
    assert float((torch.from_numpy(half).double() - want).abs().max()) <= 2 ** -11 * float(want.abs().max()) + tol
    pieces = np.zeros((w.out_features, w.in_features), np.float32)
    tasks = w.decode_tasks(pieces)
    assert len(tasks) == R
    for task in reversed(tasks):
        task(packed.DecodeScratch())
    assert np.array_equal(pieces, w.dequantize().numpy())


def test_atomic_write_honours_the_umask(tmp_path, make_weight):
    import os
    old = os.umask(0o022)
    try:
        save_layers(tmp_path / "w.bqq.safetensors", {"fc": make_weight(8, 8, 8, 8, 4, 1)})
    finally:
        os.umask(old)
    assert (tmp_path / "w.bqq.safetensors").stat().st_mode & 0o777 == 0o644


def test_saving_no_layers_is_refused(tmp_path):
    with pytest.raises(FormatError, match="no layers to save"):
        save_layers(tmp_path / "empty.bqq.safetensors", {})
    assert not list(tmp_path.iterdir())
