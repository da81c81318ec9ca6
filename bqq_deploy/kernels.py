"""ctypes binding of the native libraries (plugins/bqq_matmul, plugins/bqq_gather,
docs/KERNELS.md): the C++ CPU references and the CUDA kernels of BQQMatMul and BQQGather,
on torch tensors."""

from __future__ import annotations

import ctypes
import functools
import os
from pathlib import Path

import torch

from .format import BQQWeight

REPO_ROOT = Path(__file__).resolve().parent.parent
_REF_NAME = "libbqq_matmul_ref.so"
_CUDA_NAME = "libbqq_matmul_cuda.so"

# Status codes and dtypes of plugins/bqq_matmul/bqq_matmul.h, kernel paths of bqq_matmul_cuda.h,
# index types of plugins/bqq_gather/bqq_gather.h.
BQQ_OK, BQQ_ERR_INVALID_ARGUMENT, BQQ_ERR_CUDA, BQQ_ERR_UNSUPPORTED_ARCH = 0, 1, 2, 3
_DTYPES = {torch.float32: 0, torch.float16: 1}
_INDEX_TYPES = {torch.int32: 0, torch.int64: 1}
PATHS = {0: "none", 1: "decode-tc", 2: "gemv-portable", 3: "tiled-mma", 4: "tiled-portable", 5: "dense"}
# bqq_matmul_cuda_set_dense_min_rows: this value turns the dense path off.
DENSE_NEVER = 2**63 - 1


class KernelError(RuntimeError):
    """A native call failed; `status` is the BQQStatus code."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class LibraryNotFound(KernelError):
    """The native library was not built (or BQQ_LIB_DIR points elsewhere)."""

    def __init__(self, message: str):
        super().__init__(-1, message)


class _Layout(ctypes.Structure):
    _fields_ = [(name, ctypes.c_int32) for name in ("M", "K", "group_rows", "group_cols", "rank", "stacks")]


def library_dir() -> Path:
    """Where the built libraries are looked for: $BQQ_LIB_DIR, else <repo>/build/plugins/bqq_matmul."""
    env = os.environ.get("BQQ_LIB_DIR")
    return Path(env) if env else REPO_ROOT / "build" / "plugins" / "bqq_matmul"


def _open(name: str) -> ctypes.CDLL:
    path = library_dir() / name
    if not path.is_file():
        raise LibraryNotFound(f"{name} not found in {path.parent} (searched $BQQ_LIB_DIR, else "
                              f"<repo>/build/plugins/bqq_matmul); build it with `make native`")
    try:
        return ctypes.CDLL(str(path))
    except OSError as exc:
        raise LibraryNotFound(f"cannot load {path}: {exc}") from None


def _declare_common(lib: ctypes.CDLL) -> ctypes.CDLL:
    lib.bqq_last_error.restype = ctypes.c_char_p
    lib.bqq_last_error.argtypes = []
    lib.bqq_layout_check.restype = ctypes.c_int
    lib.bqq_layout_check.argtypes = [ctypes.POINTER(_Layout)]
    for fn in ("bqq_y_bits_words", "bqq_z_bits_words", "bqq_scale_count"):
        getattr(lib, fn).restype = ctypes.c_int64
        getattr(lib, fn).argtypes = [ctypes.POINTER(_Layout)]
    return lib


@functools.lru_cache(maxsize=None)
def ref_library() -> ctypes.CDLL:
    """The C++ CPU reference (libbqq_matmul_ref.so); raises LibraryNotFound."""
    lib = _declare_common(_open(_REF_NAME))
    lib.bqq_matmul_reference.restype = ctypes.c_int
    lib.bqq_matmul_reference.argtypes = [ctypes.POINTER(_Layout), ctypes.c_int64] + [ctypes.c_void_p] * 6
    _declare_gather(lib, "bqq_gather_reference", [])
    return lib


def _declare_gather(lib: ctypes.CDLL, name: str, tail: list) -> None:
    fn = getattr(lib, name)
    fn.restype = ctypes.c_int
    fn.argtypes = ([ctypes.POINTER(_Layout), ctypes.c_int64, ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
                   + [ctypes.c_void_p] * 5 + tail)


@functools.lru_cache(maxsize=None)
def cuda_library() -> ctypes.CDLL:
    """The CUDA kernels (libbqq_matmul_cuda.so); raises LibraryNotFound."""
    lib = _declare_common(_open(_CUDA_NAME))
    lib.bqq_matmul_cuda_workspace.restype = ctypes.c_size_t
    lib.bqq_matmul_cuda_workspace.argtypes = [ctypes.POINTER(_Layout), ctypes.c_int64, ctypes.c_int]
    lib.bqq_matmul_cuda.restype = ctypes.c_int
    lib.bqq_matmul_cuda.argtypes = ([ctypes.POINTER(_Layout), ctypes.c_int64, ctypes.c_int]
                                    + [ctypes.c_void_p] * 7 + [ctypes.c_size_t, ctypes.c_void_p])
    lib.bqq_dequantize_cuda.restype = ctypes.c_int
    lib.bqq_dequantize_cuda.argtypes = [ctypes.POINTER(_Layout)] + [ctypes.c_void_p] * 5
    lib.bqq_matmul_cuda_set_portable.restype = ctypes.c_int
    lib.bqq_matmul_cuda_set_portable.argtypes = [ctypes.c_int]
    lib.bqq_matmul_cuda_last_path.restype = ctypes.c_int
    lib.bqq_matmul_cuda_last_path.argtypes = []
    lib.bqq_matmul_cuda_set_dense_min_rows.restype = ctypes.c_int64
    lib.bqq_matmul_cuda_set_dense_min_rows.argtypes = [ctypes.c_int64]
    lib.bqq_matmul_cuda_dense_min_rows.restype = ctypes.c_int64
    lib.bqq_matmul_cuda_dense_min_rows.argtypes = []
    _declare_gather(lib, "bqq_gather_cuda", [ctypes.c_void_p])
    return lib


def set_portable(enable: bool) -> bool:
    """Force the portable SIMT kernels (the sm_75/sm_72 path) on any GPU, process-wide, so a
    newer GPU tests that path too; returns the previous setting. BQQ_CUDA_PORTABLE=1 in the
    environment sets it before the library is first used (TensorRT plugin included)."""
    return bool(cuda_library().bqq_matmul_cuda_set_portable(int(enable)))


def dense_min_rows() -> int | None:
    """Row count from which fp16 cuda_matmul calls decode W_hat to fp16 and run cuBLASLt (the
    dense path), or None when the library was built without cuBLASLt."""
    rows = cuda_library().bqq_matmul_cuda_dense_min_rows()
    return None if rows < 0 else rows


def set_dense_min_rows(rows: int) -> int:
    """Set the dense-path threshold process-wide (DENSE_NEVER turns the path off; the
    benchmark uses this to time both sides); returns the previous value."""
    lib = cuda_library()
    previous = lib.bqq_matmul_cuda_set_dense_min_rows(rows)
    if previous < 0:
        raise KernelError(BQQ_ERR_INVALID_ARGUMENT, lib.bqq_last_error().decode(errors="replace"))
    return previous


def last_path() -> str:
    """Kernel family of the last successful cuda_matmul on this thread (PATHS values)."""
    return PATHS[cuda_library().bqq_matmul_cuda_last_path()]


def layout_of(weight: BQQWeight) -> _Layout:
    return _Layout(weight.out_features, weight.in_features, weight.group_rows, weight.group_cols,
                   weight.rank, weight.stacks)


def _check(lib: ctypes.CDLL, status: int, what: str) -> None:
    if status != BQQ_OK:
        raise KernelError(status, f"{what}: {lib.bqq_last_error().decode(errors='replace')}")


def _checked_tensors(lib: ctypes.CDLL, weight: BQQWeight, layout: _Layout, device: torch.device):
    """The packed tensors as contiguous tensors on `device`, their sizes checked against the
    layout (the C side sees only pointers)."""
    _check(lib, lib.bqq_layout_check(ctypes.byref(layout)), "layout")
    want = {"y_bits": (lib.bqq_y_bits_words(ctypes.byref(layout)), torch.int32),
            "z_bits": (lib.bqq_z_bits_words(ctypes.byref(layout)), torch.int32),
            "scales": (lib.bqq_scale_count(ctypes.byref(layout)), torch.float16)}
    out = []
    for name, (count, dtype) in want.items():
        tensor = getattr(weight, name)
        if tensor.dtype != dtype or tensor.numel() != count:
            raise KernelError(BQQ_ERR_INVALID_ARGUMENT, f"{name}: {tensor.dtype} with {tensor.numel()} "
                              f"elements, layout needs {dtype} with {count}")
        if tensor.device != device:
            raise KernelError(BQQ_ERR_INVALID_ARGUMENT, f"{name} is on {tensor.device}, input on {device}")
        out.append(tensor.contiguous())
    if weight.bias is not None and weight.bias.numel() != weight.out_features:
        raise KernelError(BQQ_ERR_INVALID_ARGUMENT,
                          f"bias: {weight.bias.numel()} elements, layout needs {weight.out_features}")
    return out


def _rows2d(x: torch.Tensor, weight: BQQWeight) -> torch.Tensor:
    if x.shape[-1] != weight.in_features:
        raise ValueError(f"input has {x.shape[-1]} features, layer expects {weight.in_features}")
    return x.reshape(-1, weight.in_features).contiguous()


def reference_matmul_cpp(x: torch.Tensor, weight: BQQWeight) -> torch.Tensor:
    """y = x W_hat^T + bias through the C++ CPU reference (double accumulation); fp32 on CPU."""
    lib = ref_library()
    layout = layout_of(weight)
    y_bits, z_bits, scales = _checked_tensors(lib, weight, layout, torch.device("cpu"))
    rows = _rows2d(x.detach().cpu().float(), weight)
    out = torch.empty(rows.shape[0], weight.out_features, dtype=torch.float32)
    bias = None if weight.bias is None else weight.bias.detach().cpu().float().contiguous()
    status = lib.bqq_matmul_reference(ctypes.byref(layout), rows.shape[0], rows.data_ptr(),
                                      y_bits.data_ptr(), z_bits.data_ptr(), scales.data_ptr(),
                                      None if bias is None else bias.data_ptr(), out.data_ptr())
    _check(lib, status, "bqq_matmul_reference")
    return out.reshape(*x.shape[:-1], weight.out_features)


@functools.lru_cache(maxsize=None)
def cuda_status() -> tuple[bool, str]:
    """(usable, reason): whether cuda_matmul can run here, and why not. Decided once per
    process: BQQLinear asks on every forward, and a missing library must not mean a
    directory search per call."""
    if not torch.cuda.is_available():
        return False, "torch reports no CUDA device (CPU-only torch build or no GPU)"
    try:
        cuda_library()
    except LibraryNotFound as exc:
        return False, str(exc)
    return True, "ok"


def cuda_available() -> bool:
    """True when torch sees a GPU and the CUDA library is built; cuda_status() gives the reason."""
    return cuda_status()[0]


def cuda_matmul(x: torch.Tensor, weight: BQQWeight, out: torch.Tensor | None = None) -> torch.Tensor:
    """y = x W_hat^T + bias with the CUDA kernels, on x's device and torch's current stream.
    x: fp16 or fp32 CUDA tensor [..., K]; the output has x's dtype. `out`, if given, is a
    contiguous tensor of x's dtype with rows * M elements that receives the result. fp16 calls
    with dense_min_rows() rows or more decode W_hat once into a workspace (allocated here) and
    run cuBLASLt; last_path() says which path ran."""
    if x.dtype not in _DTYPES:
        raise TypeError(f"cuda_matmul supports float16 and float32 inputs, got {x.dtype}")
    if not x.is_cuda:
        raise ValueError(f"cuda_matmul needs a CUDA input, got one on {x.device}")
    lib = cuda_library()
    layout = layout_of(weight)
    y_bits, z_bits, scales = _checked_tensors(lib, weight, layout, x.device)
    rows = _rows2d(x, weight)
    bias = None if weight.bias is None else weight.bias.to(device=x.device, dtype=x.dtype).contiguous()
    if out is None:
        out = torch.empty(rows.shape[0], weight.out_features, dtype=x.dtype, device=x.device)
    elif (out.dtype != x.dtype or out.device != x.device or not out.is_contiguous()
          or out.numel() != rows.shape[0] * weight.out_features):
        raise ValueError(f"out: {out.dtype} {tuple(out.shape)} on {out.device}, need a contiguous "
                         f"{x.dtype} tensor of {rows.shape[0]} x {weight.out_features} on {x.device}")
    dtype = _DTYPES[x.dtype]
    with torch.cuda.device(x.device):
        ws_bytes = lib.bqq_matmul_cuda_workspace(ctypes.byref(layout), rows.shape[0], dtype)
        workspace = torch.empty(ws_bytes, dtype=torch.uint8, device=x.device) if ws_bytes else None
        stream = torch.cuda.current_stream(x.device).cuda_stream
        status = lib.bqq_matmul_cuda(ctypes.byref(layout), rows.shape[0], dtype, rows.data_ptr(),
                                     y_bits.data_ptr(), z_bits.data_ptr(), scales.data_ptr(),
                                     None if bias is None else bias.data_ptr(), out.data_ptr(),
                                     None if workspace is None else workspace.data_ptr(), ws_bytes, stream)
    _check(lib, status, "bqq_matmul_cuda")
    return out.reshape(*x.shape[:-1], weight.out_features)


def cuda_dequantize(weight: BQQWeight, device: torch.device | str = "cuda") -> torch.Tensor:
    """W_hat [M, K] as fp16 on `device`, decoded by the CUDA kernel (for a dense GEMM when many
    rows share one decode; bench/kernel_bench.py measures from how many rows that wins)."""
    device = torch.device(device)
    lib = cuda_library()
    layout = layout_of(weight)
    y_bits, z_bits, scales = _checked_tensors(lib, weight, layout, device)
    out = torch.empty(weight.out_features, weight.in_features, dtype=torch.float16, device=device)
    with torch.cuda.device(device):
        stream = torch.cuda.current_stream(device).cuda_stream
        status = lib.bqq_dequantize_cuda(ctypes.byref(layout), y_bits.data_ptr(), z_bits.data_ptr(),
                                         scales.data_ptr(), out.data_ptr(), stream)
    _check(lib, status, "bqq_dequantize_cuda")
    return out


# --- BQQGather: embedding rows of a table stored in the BQQ layout ---------------------------

def _gather_args(lib: ctypes.CDLL, indices: torch.Tensor, weight: BQQWeight, dtype: torch.dtype,
                 device: torch.device):
    if indices.dtype not in _INDEX_TYPES:
        raise TypeError(f"indices must be int32 or int64, got {indices.dtype}")
    if dtype not in _DTYPES:
        raise TypeError(f"dtype must be float32 or float16 (the scales' and the output's type), got {dtype}")
    layout = layout_of(weight)
    y_bits, z_bits, scales = _checked_tensors(lib, weight, layout, device)
    return layout, y_bits, z_bits, scales.to(dtype).contiguous()


def _out_of_range(indices: torch.Tensor, weight: BQQWeight) -> IndexError:
    m = weight.out_features
    bad = indices[(indices < -m) | (indices >= m)].flatten()[:5].tolist()
    return IndexError(f"index out of range [-{m}, {m}) of a table with {m} rows: {bad} "
                      "(those rows were written as zeros)")


def gather_reference_cpp(indices: torch.Tensor, weight: BQQWeight, dtype: torch.dtype = torch.float32,
                         strict: bool = True) -> torch.Tensor:
    """W_hat[indices] through the C++ CPU reference of BQQGather: output [*indices.shape, K] of
    `dtype` (the scales are widened to it first, as the TensorRT files carry them). An index i
    in [-M, 0) means row i + M; one outside [-M, M) gives a zero row, and IndexError when strict."""
    lib = ref_library()
    layout, y_bits, z_bits, scales = _gather_args(lib, indices, weight, dtype, torch.device("cpu"))
    flat = indices.detach().cpu().contiguous().reshape(-1)
    out = torch.empty(flat.numel(), weight.in_features, dtype=dtype)
    flag = ctypes.c_int32(0)
    status = lib.bqq_gather_reference(ctypes.byref(layout), flat.numel(), _INDEX_TYPES[flat.dtype],
                                      flat.data_ptr(), _DTYPES[dtype], y_bits.data_ptr(), z_bits.data_ptr(),
                                      scales.data_ptr(), out.data_ptr(), ctypes.byref(flag))
    _check(lib, status, "bqq_gather_reference")
    if strict and flag.value:
        raise _out_of_range(flat, weight)
    return out.reshape(*indices.shape, weight.in_features)


def gather_cuda(indices: torch.Tensor, weight: BQQWeight, dtype: torch.dtype = torch.float32,
                strict: bool = True, out: torch.Tensor | None = None) -> torch.Tensor:
    """W_hat[indices] with the CUDA kernel of BQQGather, on the indices' device and torch's
    current stream (same contract as gather_reference_cpp). strict=True synchronises once to
    read the out-of-range flag; strict=False leaves zero rows and does not wait. `out`, if
    given, is a contiguous `dtype` tensor with indices.numel() * K elements."""
    if not indices.is_cuda:
        raise ValueError(f"gather_cuda needs CUDA indices, got them on {indices.device}")
    lib = cuda_library()
    layout, y_bits, z_bits, scales = _gather_args(lib, indices, weight, dtype, indices.device)
    flat = indices.contiguous().reshape(-1)
    count = flat.numel()
    if out is None:
        out = torch.empty(count, weight.in_features, dtype=dtype, device=indices.device)
    elif (out.dtype != dtype or out.device != indices.device or not out.is_contiguous()
          or out.numel() != count * weight.in_features):
        raise ValueError(f"out: {out.dtype} {tuple(out.shape)} on {out.device}, need a contiguous "
                         f"{dtype} tensor of {count} x {weight.in_features} on {indices.device}")
    flag = torch.zeros(1, dtype=torch.int32, device=indices.device)
    with torch.cuda.device(indices.device):
        stream = torch.cuda.current_stream(indices.device).cuda_stream
        status = lib.bqq_gather_cuda(ctypes.byref(layout), count, _INDEX_TYPES[flat.dtype], flat.data_ptr(),
                                     _DTYPES[dtype], y_bits.data_ptr(), z_bits.data_ptr(), scales.data_ptr(),
                                     out.data_ptr(), flag.data_ptr(), stream)
    _check(lib, status, "bqq_gather_cuda")
    if strict and bool(flag.item()):
        raise _out_of_range(flat, weight)
    return out.reshape(*indices.shape, weight.in_features)
