#!/bin/sh
# Build the BQQ TensorRT plugin and model.engine on this device (written by bqq-export).
# Environment: CUDA_ARCHS (default: native), TensorRT_ROOT (default: JetPack/system paths).
set -eu
cd "$(dirname "$0")"
cmake -S @PLUGIN_DIR@ -B @PLUGIN_DIR@/build -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_CUDA_ARCHITECTURES="${CUDA_ARCHS:-native}" ${TensorRT_ROOT:+-DTensorRT_ROOT="$TensorRT_ROOT"}
cmake --build @PLUGIN_DIR@/build -j "$(nproc)"
test -f @PLUGIN@ || { echo "plugin was not built: @PLUGIN@ (was TensorRT found?)" >&2; exit 1; }
if command -v bqq-build >/dev/null 2>&1; then
    bqq-build . --plugin @PLUGIN@ "$@"
else
    precision_file=@TRT_ONNX_FP16@
    [ -f "$precision_file" ] || precision_file=@TRT_ONNX@
    @TRTEXEC_COMMAND@
fi
