#!/usr/bin/env bash
# Compile-check the TensorRT plugin library (BQQMatMul and BQQGather) against a TensorRT
# include directory, with -Wall -Wextra -Werror, the TensorRT headers included as SYSTEM
# headers. Headers only: no TensorRT library is needed and nothing is linked or run, so this
# works on a CPU-only machine with nvcc (cuda_runtime_api.h). Downloads nothing.
#
# usage: tools/trt_compile_check.sh TENSORRT_INCLUDE_DIR [BUILD_DIR]
#   TENSORRT_INCLUDE_DIR  the folder holding NvInfer.h and NvInferVersion.h (e.g. the
#                         include/ folder of a TensorRT tar or of the NVIDIA/TensorRT repo)
#   BUILD_DIR             kept for inspection; default: a temporary folder, removed afterwards
# Exit status: 0 when every plugin source compiles, non-zero otherwise.
set -euo pipefail

if [[ $# -lt 1 || $# -gt 2 || "$1" == -h || "$1" == --help ]]; then
    sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
include_dir=$(cd "$1" 2>/dev/null && pwd) || { echo "error: no such directory: $1" >&2; exit 2; }
if [[ ! -f "$include_dir/NvInfer.h" || ! -f "$include_dir/NvInferVersion.h" ]]; then
    echo "error: $include_dir holds no NvInfer.h / NvInferVersion.h (pass TensorRT's include/ folder)" >&2
    exit 2
fi
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

if [[ $# -eq 2 ]]; then
    build_dir=$2
else
    build_dir=$(mktemp -d "${TMPDIR:-/tmp}/bqq-trt-check.XXXXXX")
    trap 'rm -rf "$build_dir"' EXIT
fi

# The top-level CMakeLists.txt looks for TensorRT only when a CUDA compiler is found.
if [[ -z "${CUDACXX:-}" ]] && ! command -v nvcc >/dev/null && [[ -x /usr/local/cuda/bin/nvcc ]]; then
    export CUDACXX=/usr/local/cuda/bin/nvcc
fi

# TensorRT_INCLUDE_DIR pins the headers (it is FindTensorRT's cache entry); the CUDA
# architecture only keeps CMake from probing for a GPU; the plugin target compiles no CUDA.
mkdir -p "$build_dir"
log="$build_dir/bqq-configure.log"
cmake -S "$repo" -B "$build_dir" -DBQQ_TRT_COMPILE_CHECK=ON -DTensorRT_INCLUDE_DIR="$include_dir" \
    -DCMAKE_CUDA_ARCHITECTURES=80 -DBQQ_WERROR=ON >"$log" 2>&1 || { cat "$log" >&2; exit 1; }
grep -E "TensorRT|bqq:" "$log" || true
if ! grep -q "BQQ_TRT_COMPILE_CHECK=ON" "$log"; then
    echo "error: CMake did not pick up the TensorRT headers (is nvcc installed? see $log)" >&2
    exit 1
fi
cmake --build "$build_dir" --target bqq_trt_plugin -j "${JOBS:-2}"
echo "OK: bqq_trt_plugin compiles against $include_dir"
