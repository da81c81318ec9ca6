"""ONNX Runtime sessions for bundle files, with the portable file's weights decoded here.

Plain ONNX Runtime runs model.onnx as it is: at load it folds each bqq::BQQDecode node into
its weight, through a chain of standard ops whose intermediates (bits, block products) cost
seconds and, transiently, several times the model's memory. `ort_session` instead decodes
the packed tensors itself (BQQWeight.dequantize: the same W_hat, a few block rows at a time) into one
buffer that ONNX Runtime reads as an in-memory external-data file: it copies the weights in
while it creates the session, as it would from a float model's file, and the buffer is freed
then, so session memory is that of the float model. The file's other external data
(weights.bin) goes in beside it, mapped from disk: no copy of the model passes through
protobuf (which stops at 2 GB). The decode runs on every CPU the process may use: it is all
that session creation waits on beyond what a float model costs."""

from __future__ import annotations

import ctypes
import os
import shutil
import threading
import uuid
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np
import onnx
import torch
from onnx import helper

from .. import contract
from ..format import BQQWeight, DecodeScratch
from ..layout import Layout
from ..tensors import TensorFiles

_ALIGN = 64  # bytes: each decoded weight starts on a cache line of the buffer


def decoded_model(path: str | Path, location: str, into: Path | None = None
                  ) -> tuple[onnx.ModelProto, np.ndarray | None]:
    """The model at path with every BQQDecode node (and the Transpose that may follow it)
    replaced by an initializer whose external data is at `location`, and that file's bytes:
    the decoded weights, one after another (in memory, or with `into` a file mapped into
    memory, written there). (model, None) when the file decodes nothing.
    Other external tensors are left where they are (files beside path), not loaded."""
    model = onnx.load(str(path), load_external_data=False)
    files = TensorFiles(Path(path).parent)
    graph = model.graph
    decoders = [n for n in graph.node if n.domain == contract.DOMAIN and n.op_type == contract.DECODE_OP]
    if not decoders:
        return model, None
    body = next(f for f in model.functions if f.domain == contract.DOMAIN and f.name == contract.DECODE_OP)
    half = any(n.op_type == "Cast" and helper.get_attribute_value(n.attribute[0]) == onnx.TensorProto.FLOAT16
               for n in body.node if n.output[0] == body.output[0])
    dtype = np.dtype(np.float16 if half else np.float32)
    inits = {i.name: i for i in graph.initializer}
    users = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            users[name].append(node)
    # First the places: each weight's name, layout, orientation and offset in the buffer.
    planned, dropped_nodes, dropped_inits, size = [], set(), set(), 0
    for node in decoders:
        fields = {a.name: a.i for a in node.attribute}
        layout = Layout.checked({contract.MATMUL.attribute_fields[k]: v for k, v in fields.items()
                                 if k in contract.MATMUL.attribute_fields}, node.name)
        name, after, transposed = node.output[0], users[node.output[0]], False
        if len(after) == 1 and after[0].op_type == "Transpose" and [
                list(a.ints) for a in after[0].attribute if a.name == "perm"] in ([[1, 0]], []):
            name, transposed = after[0].output[0], True
            dropped_nodes.add(id(after[0]))
        planned.append((node, layout, name, transposed, size))
        size += -(-layout.out_features * layout.in_features * dtype.itemsize // _ALIGN) * _ALIGN
        dropped_nodes.add(id(node))
        dropped_inits.update(node.input)
    buffer = np.empty(size, np.uint8) if into is None else np.memmap(into, np.uint8, "w+", shape=(size,))
    placeholders, tasks = [], []
    for node, layout, name, transposed, offset in planned:
        y, z, s = (torch.from_numpy(files.array(inits[n])) for n in node.input)
        shape = (layout.in_features, layout.out_features) if transposed else (layout.out_features, layout.in_features)
        nbytes = shape[0] * shape[1] * dtype.itemsize
        target = buffer[offset:offset + nbytes].view(dtype).reshape(shape)
        # Decoded straight into its place in the buffer (transposed where the graph wants W^T).
        tasks += BQQWeight(layout.out_features, layout.in_features, layout.group_rows, layout.group_cols,
                           layout.rank, y, z, s).validate(node.name).decode_tasks(target.T if transposed else target)
        placeholder = onnx.TensorProto(name=name, data_type=helper.np_dtype_to_tensor_dtype(dtype),
                                       dims=shape, data_location=onnx.TensorProto.EXTERNAL)
        for key, value in (("location", location), ("offset", offset), ("length", nbytes)):
            placeholder.external_data.add(key=key, value=str(value))
        placeholders.append(placeholder)
    _run_all(tasks, size)
    still_used = {name for node in graph.node if id(node) not in dropped_nodes for name in node.input}
    kept_nodes = [n for n in graph.node if id(n) not in dropped_nodes]
    del graph.node[:]
    graph.node.extend(kept_nodes)
    kept = [i for i in graph.initializer if i.name not in dropped_inits or i.name in still_used]
    del graph.initializer[:]
    graph.initializer.extend(kept + placeholders)
    functions = [f for f in model.functions if not (f.domain == contract.DOMAIN and f.name == contract.DECODE_OP)]
    del model.functions[:]
    model.functions.extend(functions)
    return model, buffer


# Decoded bytes below which the decode stays on the calling thread: worker threads cost more
# than they save there (their start, and a few MB of per-thread BLAS and heap memory that a
# small model's session would otherwise be measured by).
_THREADED_DECODE_BYTES = 16 << 20


def _run_all(tasks: list, nbytes: int) -> None:
    """Run independent decode tasks on the CPUs this process may use (numpy releases the GIL
    in the unpacking and the products): session creation waits on the decode alone."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads = min(len(tasks), cpus) if nbytes >= _THREADED_DECODE_BYTES else 1
    if threads <= 1:
        scratch = DecodeScratch()
        for task in tasks:
            task(scratch)
        return
    local = threading.local()  # one DecodeScratch per worker, gone with the pool

    def run(task) -> None:
        if not hasattr(local, "scratch"):
            local.scratch = DecodeScratch()
        task(local.scratch)

    with ThreadPoolExecutor(threads, thread_name_prefix="bqq-decode") as pool:
        for done in [pool.submit(run, task) for task in tasks]:
            done.result()


def ort_session(path: str | Path, options=None, providers: Sequence[str] | None = None, *,
                decode_dir: str | Path | None = None):
    """An onnxruntime.InferenceSession for path; a portable bundle file's packed weights are
    decoded here (see the module docstring). `options` serve this one session: the decoded
    weights are registered on them under a name no other session uses.

    decode_dir: decode into a file there instead of memory; ONNX Runtime maps that file
    (deleted once the session exists: the mapping keeps it) rather than copying a buffer, so
    creation peaks at about the weights' size once instead of twice (an export validating a
    model of several GB does this in its working directory)."""
    import onnxruntime as ort

    options = options or ort.SessionOptions()
    providers = list(providers or ["CPUExecutionProvider"])
    stem = f"bqq-decoded-{uuid.uuid4().hex}"
    location = f"{stem}.bin"  # in memory, a name the buffer stands for
    spill = None if decode_dir is None else Path(decode_dir)
    spilled = [] if spill is None else [location, f"{stem}.onnx"]  # removed whatever happens
    try:
        model, weights = decoded_model(path, location, into=None if spill is None else spill / location)
        if weights is None:
            return ort.InferenceSession(str(path), options, providers=providers)
        # The file's own external data (weights.bin): from memory, mapped from disk, or beside
        # the spilled model as links (ONNX Runtime takes all external files one way or the other)
        files = TensorFiles(Path(path).parent).mapped(model, exclude={location})
        if spill is None:
            files[location] = weights
            options.add_external_initializers_from_files_in_memory(
                list(files), list(files.values()), [array.nbytes for array in files.values()])
            session = ort.InferenceSession(model.SerializeToString(), options, providers=providers)
        else:
            weights.flush()
            del weights  # our mapping: ONNX Runtime maps the file afresh
            linked = {name: f"{stem}-{name}" for name in files}
            for name, link in linked.items():
                spilled.append(link)
                _link_or_copy(Path(path).parent / name, spill / link)
            for tensor in model.graph.initializer:
                for entry in tensor.external_data:
                    if entry.key == "location" and entry.value in linked:
                        entry.value = linked[entry.value]
            onnx.save(model, str(spill / f"{stem}.onnx"))
            session = ort.InferenceSession(str(spill / f"{stem}.onnx"), options, providers=providers)
    finally:
        for name in spilled:
            (spill / name).unlink(missing_ok=True)
    model = files = weights = None  # ONNX Runtime copied (or mapped) the weights: free ours
    _release_freed_heap()
    return session


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:  # another file system
        shutil.copyfile(source, target)


def _release_freed_heap() -> None:
    """Hand the decode's freed temporaries back to the OS (glibc keeps freed heap pages
    resident; elsewhere there is nothing to do)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
