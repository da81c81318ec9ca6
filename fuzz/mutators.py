"""Mutators of the Python fuzz harness (fuzz/pyfuzz.py): byte-level edits for every target
plus cheap structure-aware ones that keep a file parseable one level down (a safetensors
header that is still JSON with a bad offset, a zip whose member has a bad .npy header, an
ONNX model with a bad dim), where the interesting checks live.

Every mutator is a function (data, rng) -> bytes of a random.Random; none imports
bqq_deploy, so the parent process stays light and the results are reproducible.
"""

from __future__ import annotations

import io
import json
import random
import re
import struct
import warnings
import zipfile

# Python 3.11 refuses int <-> str conversions above 4300 digits; the mutators build such
# numbers on purpose (the readers must cope with them), so they bypass the limit by text.
HUGE_DIGITS = "7" * 5000
INTERESTING_INTS = (0, 1, 2, -1, -2, 3, 4, 16, 31, 32, 33, 64, 255, 256, 4095, 4096, 4097, 65535,
                    65536, 2**31 - 1, 2**31, 2**32, 2**53 + 1, 2**63 - 1, 2**63, 2**64, 10**30)
INTERESTING_VALUES = (*INTERESTING_INTS, 0.5, 1.5, -0.0, 1e308, "", "x", "1", "float32", "I32",
                      None, True, False, [], {}, [1], {"a": 1})
_RAW = "\x00bqq-raw\x00"  # placeholder a JSON dump replaces by a raw token
RAW_TOKENS = (HUGE_DIGITS, "-" + HUGE_DIGITS, "1e999", "NaN", "-Infinity", "[" * 3000 + "]" * 3000,
              '{"a":' * 3000 + "1" + "}" * 3000, '"\\ud800"', "0.1e-99999")


# --- bytes ---------------------------------------------------------------------------------

def mutate_bytes(data: bytes, rng: random.Random, pool=()) -> bytes:
    """One of the edits fuzz/driver.cpp makes (same list, Python's PRNG)."""
    b = bytearray(data)
    op = rng.randrange(11)
    if op == 0 and b:
        b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
    elif op == 1 and b:
        b[rng.randrange(len(b))] = rng.randrange(256)
    elif op == 2 and b:
        b[rng.randrange(len(b))] = rng.choice(b"\x00\x01\x7f\x80\xff 0123456789(),:'\"{}[]xL-\n\\")
    elif op == 3:
        at = rng.randrange(len(b) + 1)
        b[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
    elif op == 4 and b:
        at = rng.randrange(len(b))
        del b[at:at + rng.randint(1, 16)]
    elif op == 5 and len(b) > 1:
        src, dst = rng.randrange(len(b)), rng.randrange(len(b))
        n = rng.randint(1, min(len(b) - src, len(b) - dst))
        b[dst:dst + n] = b[src:src + n]
    elif op == 6:
        width = rng.choice((1, 2, 4, 8))
        if len(b) >= width:
            value = rng.choice(INTERESTING_INTS) if rng.random() < 0.8 else rng.getrandbits(64)
            at = rng.randrange(len(b) - width + 1)
            b[at:at + width] = (value % 2 ** (8 * width)).to_bytes(width, "little")
    elif op == 7:
        numbers = [m.span() for m in re.finditer(rb"\d+", bytes(b))]
        if numbers:
            start, end = rng.choice(numbers)
            b[start:end] = str(rng.choice(INTERESTING_INTS)).encode() if rng.random() < 0.9 else HUGE_DIGITS.encode()
    elif op == 8 and b:
        del b[rng.randrange(len(b)):]
    elif op == 9 and pool:
        other = rng.choice(pool)
        if other:
            start = rng.randrange(len(other))
            chunk = other[start:start + rng.randint(1, len(other) - start)]
            at = rng.randrange(len(b) + 1)
            b[at:at + (len(chunk) if rng.random() < 0.5 else 0)] = chunk
    else:
        b += bytes([rng.choice(b"9\x00[{ ")]) * rng.randint(1, 4096 if rng.random() < 0.1 else 32)
    return bytes(b)


# --- JSON ------------------------------------------------------------------------------------

def _slots(node, slots):
    """Every (container, key) of a JSON tree, containers included."""
    if isinstance(node, dict):
        for key in node:
            slots.append((node, key))
            _slots(node[key], slots)
    elif isinstance(node, list):
        for i in range(len(node)):
            slots.append((node, i))
            _slots(node[i], slots)
    return slots


def mutate_json_value(doc, rng: random.Random):
    """Edit one place of a parsed JSON document in place (or return a replacement)."""
    slots = _slots(doc, [])
    if not slots:
        return rng.choice(INTERESTING_VALUES)
    container, key = rng.choice(slots)
    op = rng.randrange(8)
    if op == 0 or op == 1:
        container[key] = rng.choice(INTERESTING_VALUES)
    elif op == 2:
        container[key] = _RAW + rng.choice(RAW_TOKENS)
    elif op == 3:
        del container[key]
    elif op == 4:
        container[key] = [container[key]] if rng.random() < 0.5 else {"v": container[key]}
    elif op == 5 and isinstance(container, dict):
        container[rng.choice(("", "x", key + "_", "__metadata__", "inputs", "shape"))] = container.pop(key)
    elif op == 6 and isinstance(container, list):
        container.insert(rng.randrange(len(container) + 1), container[key])
    else:
        value = container[key]
        if isinstance(value, int) and not isinstance(value, bool):
            container[key] = value + rng.choice((-1, 1, 2**31, -(2**31), 2**63))
        elif isinstance(value, str):
            container[key] = rng.choice((value + "x", value[:-1], value.upper(), value * 3, "\udcff"))
        else:
            container[key] = rng.choice(INTERESTING_VALUES)
    return doc


def dump_json(doc) -> bytes:
    """json.dumps with the raw placeholders replaced by their tokens."""
    text = json.dumps(doc, ensure_ascii=False)
    text = re.sub(r'"\\u0000bqq-raw\\u0000(.*?)(?<!\\)"',
                  lambda m: json.loads(f'"{m[1]}"'), text)
    return text.encode("utf-8", "surrogatepass")


def mutate_json(data: bytes, rng: random.Random) -> bytes:
    try:
        doc = json.loads(data)
    except ValueError:
        return mutate_bytes(data, rng)
    for _ in range(rng.randint(1, 3)):
        doc = mutate_json_value(doc, rng)
    return dump_json(doc)


# --- safetensors -------------------------------------------------------------------------

def mutate_safetensors(data: bytes, rng: random.Random) -> bytes:
    """A header that is still JSON (mostly with the right length) but a wrong dtype, shape,
    offset, layer field or metadata; or the data section cut or edited."""
    try:
        (n,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8:8 + n])
        body = data[8 + n:]
        assert isinstance(header, dict)
    except (struct.error, ValueError, AssertionError):
        return mutate_bytes(data, rng)
    op = rng.randrange(6)
    tensors = [k for k in header if k != "__metadata__" and isinstance(header[k], dict)]
    meta = header.get("__metadata__")
    if op == 0 and tensors:  # one field of a tensor entry
        entry = header[rng.choice(tensors)]
        field = rng.choice(("dtype", "shape", "data_offsets"))
        if field == "dtype":
            entry[field] = rng.choice(("I32", "F16", "F32", "I8", "U8", "F64", "BF16", "I64", "", None, 5))
        elif isinstance(entry.get(field), list) and entry[field] and rng.random() < 0.7:
            values = entry[field]
            i = rng.randrange(len(values))
            values[i] = rng.choice((values[i] + rng.choice((-1, 1, 4, -4)), *INTERESTING_VALUES))
        else:
            mutate_json_value(entry, rng)
    elif op == 1 and isinstance(meta, dict) and isinstance(meta.get("layers"), str):  # a layer field
        try:
            layers = json.loads(meta["layers"])
            layers = mutate_json_value(layers, rng)
            if isinstance(layers, dict) and layers and rng.random() < 0.3:  # a plausible change
                fields = layers[rng.choice(list(layers))]
                if isinstance(fields, dict) and fields:
                    key = rng.choice(list(fields))
                    fields[key] = rng.choice((0, 1, 2, 4096, 4097, 17, 33, 2**31 - 1, 2**31))
            meta["layers"] = dump_json(layers).decode("utf-8", "surrogatepass")
        except ValueError:
            meta["layers"] = rng.choice(RAW_TOKENS)
    elif op == 2:  # anywhere in the header
        header = mutate_json_value(header, rng)
    elif op == 3 and tensors:  # spans: shift, overlap, swap
        a, b = rng.choice(tensors), rng.choice(tensors)
        if rng.random() < 0.5:
            header[a]["data_offsets"], header[b]["data_offsets"] = header[b].get("data_offsets"), header[a].get("data_offsets")
        else:
            offsets = header[a].get("data_offsets")
            if isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets):
                shift = rng.choice((-8, -4, -1, 1, 4, 8, len(body)))
                header[a]["data_offsets"] = [offsets[0] + shift, offsets[1] + shift]
    elif op == 4:  # the data section
        body = bytearray(body)
        if body and rng.random() < 0.5:
            del body[rng.randrange(len(body)):]
        elif body:
            for _ in range(rng.randint(1, 8)):  # padding bits, NaN / inf scales
                body[rng.randrange(len(body))] = rng.choice((0xFF, 0x7C, 0x7E, 0x80, 0x00))
        body = bytes(body)
    else:  # the length field itself
        text = dump_json(header)
        n = len(text) + rng.choice((-1, 1, -8, 8, 2**32, 10**8, -len(text)))
        return struct.pack("<Q", n % 2**64) + text + body
    text = dump_json(header)
    if rng.random() < 0.5:
        text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + body


# --- .npy / .npz -----------------------------------------------------------------------------

NPY_DESCRS = ("<f4", "<f8", "<f2", "|b1", "<i8", "<i4", "|u1", ">f4", "<U3", "|S2", "|O", "<c8",
              "<M8[s]", "V8", "[('a', '<f4')]", "<f16", "bogus", "")


def mutate_npy(data: bytes, rng: random.Random) -> bytes:
    """A .npy member with an edited header dict (dtype, shape, order) or a cut data block."""
    match = re.match(rb"\x93NUMPY(.)(.)", data)
    if not match:
        return mutate_bytes(data, rng)
    major = data[6]
    pre = 10 if major == 1 else 12
    if len(data) < pre:
        return mutate_bytes(data, rng)
    n = int.from_bytes(data[8:pre], "little")
    header, body = data[pre:pre + n].decode("latin1"), data[pre + n:]
    op = rng.randrange(4)
    if op == 0:
        header = re.sub(r"'descr': *'[^']*'", f"'descr': '{rng.choice(NPY_DESCRS)}'", header)
    elif op == 1:
        dims = [str(rng.choice((0, 1, 2, 3, 5, 48, 64, 2**31, 2**40, 2**62))) for _ in range(rng.randint(0, 4))]
        header = re.sub(r"'shape': *\([^)]*\)", "'shape': (" + ", ".join(dims) + ("," if len(dims) == 1 else "") + ")", header)
    elif op == 2:
        header = header.replace("False", "True") if "False" in header else header.replace("True", "False")
    else:
        body = body[:rng.randrange(len(body) + 1)] if body else b"\x00" * rng.randint(1, 64)
    raw = header.encode("latin1")
    return data[:6] + bytes([major, 0]) + len(raw).to_bytes(pre - 8, "little") + raw + body


def _zip_members(data: bytes):
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return [(info, archive.read(info)) for info in archive.infolist()]


def _zip(members, compression=zipfile.ZIP_STORED) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(buf, "w", compression) as archive:
        warnings.simplefilter("ignore")  # duplicate names are made on purpose
        for name, content in members:
            archive.writestr(name, content)
    return buf.getvalue()


def mutate_zip(data: bytes, rng: random.Random, member_mutator) -> bytes:
    """Edit one member of a zip archive with member_mutator, or rename / drop / duplicate one,
    then write a consistent archive again (so the reader gets past the zip layer)."""
    try:
        members = [(info.filename, content) for info, content in _zip_members(data)]
    except Exception:  # noqa: BLE001 - zipfile raises many types on bad archives
        return mutate_bytes(data, rng)
    if not members:
        return mutate_bytes(data, rng)
    i = rng.randrange(len(members))
    name, content = members[i]
    op = rng.randrange(6)
    if op <= 2:
        members[i] = (name, member_mutator(content, rng))
    elif op == 3:
        members[i] = (rng.choice(("x", name + ".npy", name.rsplit(".", 1)[0], "../" + name, name.upper())), content)
    elif op == 4 and len(members) > 1:
        del members[i]
    else:
        members.append((rng.choice([m[0] for m in members]) if rng.random() < 0.5 else "extra.npy", content))
    return _zip(members, zipfile.ZIP_DEFLATED if rng.random() < 0.3 else zipfile.ZIP_STORED)


def mutate_npz(data: bytes, rng: random.Random) -> bytes:
    if rng.random() < 0.05:  # not an archive at all: a bare .npy, or a pickle
        return rng.choice((b"\x93NUMPY\x01\x00\x46\x00{'descr': '<f4', 'fortran_order': False, 'shape': (2, 48), }"
                           + b" " * 6 + b"\n" + bytes(384), b"\x80\x04\x95\x05\x00\x00\x00\x00\x00\x00\x00K\x01."))
    return mutate_zip(data, rng, mutate_npy)


def mutate_pt2(data: bytes, rng: random.Random) -> bytes:
    """A torch.export archive: JSON members get JSON edits, the others byte edits."""
    def member(content: bytes, rng: random.Random) -> bytes:
        stripped = content.lstrip()
        if stripped[:1] in (b"{", b"[") and rng.random() < 0.8:
            return mutate_json(content, rng)
        return mutate_bytes(content, rng)

    return mutate_zip(data, rng, member)


# --- ONNX --------------------------------------------------------------------------------

def mutate_onnx(data: bytes, rng: random.Random) -> bytes:
    """A ModelProto with one field changed: an input's type or dims, an initializer's dims
    or data, a node's op or inputs, the opset or IR version."""
    import onnx

    try:
        model = onnx.load_from_string(data)
    except Exception:  # noqa: BLE001 - protobuf decode errors
        return mutate_bytes(data, rng)
    graph = model.graph
    op = rng.randrange(8)
    values = list(graph.input) + list(graph.output)
    if op == 0 and values:
        rng.choice(values).type.tensor_type.elem_type = rng.randrange(26)
    elif op == 1 and values:
        dims = rng.choice(values).type.tensor_type.shape.dim
        if dims and rng.random() < 0.8:
            dim = dims[rng.randrange(len(dims))]
            if rng.random() < 0.7:
                dim.dim_value = rng.choice((0, 1, 2, 7, 48, -1, -(2**40), 2**40, 2**62))
            else:
                dim.dim_param = rng.choice(("", "n", "batch", "0", " "))
        else:
            dims.add().dim_value = rng.choice((1, 2, 3))
    elif op == 2:
        value = graph.input.add()
        value.name = rng.choice(("extra", "x", graph.input[0].name if graph.input else "y"))
        if rng.random() < 0.5:
            value.type.sequence_type.elem_type.tensor_type.elem_type = 1
    elif op == 3 and graph.initializer:
        init = graph.initializer[rng.randrange(len(graph.initializer))]
        if rng.random() < 0.5:
            if init.dims:
                init.dims[rng.randrange(len(init.dims))] = rng.choice((0, 1, -1, 2**31, 2**40))
        elif rng.random() < 0.5:
            init.raw_data = init.raw_data[:rng.randrange(len(init.raw_data) + 1)]
        else:
            init.data_type = rng.randrange(26)
    elif op == 4 and graph.node:
        node = graph.node[rng.randrange(len(graph.node))]
        if rng.random() < 0.5:
            node.op_type = rng.choice(("MatMul", "Gemm", "Add", "Conv", "Relu", "Loop", "Foo", ""))
        elif node.input:
            node.input[rng.randrange(len(node.input))] = rng.choice(("", "missing", "x", "w", "h"))
    elif op == 5:
        if model.opset_import:
            model.opset_import[0].version = rng.choice((0, 1, 7, 13, 17, 18, 21, 10**6))
        else:
            model.opset_import.add().version = 18
    elif op == 6:
        model.ir_version = rng.choice((0, 1, 3, 7, 10, 11, 100))
    elif graph.input:
        del graph.input[rng.randrange(len(graph.input))]
    try:
        return model.SerializeToString()
    except Exception:  # noqa: BLE001
        return mutate_bytes(data, rng)


# --- --input-shape -------------------------------------------------------------------------

_NAMES = ("", "x", "ids", "a.b/c-d", "_", "input_1", "1abc", "ü", "x y", "::")
_DIMS = ("1", "2", "8", "128", "0", "00", "-1", "+3", "3.5", "9" * 19, "9" * 40, HUGE_DIGITS, "٣", "1_000", " 4")
_SHAPE_DTYPES = ("", "float32", "float16", "int64", "int32", "bool", "float64", "uint8", "Float32", "str")


def mutate_input_shape(data: bytes, rng: random.Random) -> bytes:
    """A fresh string from the --input-shape grammar with odd parts, or one part of the old
    one replaced; several shapes are joined by ';' (the target splits them)."""
    if rng.random() < 0.5:
        text = data.decode("utf-8", "surrogateescape")
        parts = re.split(r"([:x;])", text)
        if parts:
            i = rng.randrange(len(parts))
            parts[i] = rng.choice((*_NAMES, *_DIMS, *_SHAPE_DTYPES, ":", "x", ";"))
        return "".join(parts).encode("utf-8", "surrogateescape")
    shapes = []
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        dims = rng.choice(("x", "x", "X", "*", " x ")).join(rng.choice(_DIMS) for _ in range(rng.randint(0, 5)))
        name, dtype = rng.choice(_NAMES), rng.choice(_SHAPE_DTYPES)
        shapes.append((f"{name}:" if name or rng.random() < 0.1 else "") + dims + (f":{dtype}" if dtype else ""))
    text = ";".join(shapes)
    if rng.random() < 0.1:
        text = rng.choice((" ", "\n", "\t", "\x00")) + text + rng.choice(("", "\n", " "))
    return text.encode("utf-8", "surrogateescape")


STRUCTURED = {"safetensors": mutate_safetensors, "npz": mutate_npz, "input_shape": mutate_input_shape,
              "onnx": mutate_onnx, "pt2": mutate_pt2, "sidecar": mutate_json, "manifest": mutate_json,
              "engine_build": mutate_json}


def mutate(target: str, data: bytes, rng: random.Random, pool=(), max_len: int = 1 << 18) -> bytes:
    """1-4 stacked mutations of data, structure-aware ones 60% of the time."""
    structured = STRUCTURED.get(target)
    for _ in range(rng.randint(1, 4)):
        if structured is not None and rng.random() < 0.6:
            try:
                data = structured(data, rng)
            except Exception:  # noqa: BLE001 - the input no longer parses at that level
                data = mutate_bytes(data, rng, pool)
        else:
            data = mutate_bytes(data, rng, pool)
    return data[:max_len]
