// CUDA entry point of BQQMatMul: one launch API for every caller (TensorRT plugin, PyTorch
// dispatch, benchmarks). Picks the small-batch (GEMV-like) or the tiled kernel by row count.
#ifndef BQQ_MATMUL_CUDA_H
#define BQQ_MATMUL_CUDA_H

#include <cuda_runtime_api.h>

#include "bqq_matmul.h"

#ifdef __cplusplus
extern "C" {
#endif

// Scratch bytes bqq_matmul_cuda needs for up to `rows` rows (may be 0). Never decreases as
// rows grows, so the size for a profile's largest batch serves every smaller one.
size_t bqq_matmul_cuda_workspace(const BQQLayout* layout, int64_t rows, BQQDataType dtype);

// out[rows, M] = x[rows, K] W_hat^T + bias, all device pointers, enqueued on stream.
// x, bias (optional, NULL for none) and out have type dtype; scales are fp16; y_bits and
// z_bits are the int32 words of docs/FORMAT.md (INT8 bytes in ONNX/TensorRT are the same
// memory). Returns BQQ_ERR_UNSUPPORTED_ARCH when the library was built without the running
// GPU's architecture; bqq_last_error() says which architectures it holds.
BQQStatus bqq_matmul_cuda(const BQQLayout* layout, int64_t rows, BQQDataType dtype,
                          const void* x, const int32_t* y_bits, const int32_t* z_bits,
                          const void* scales, const void* bias, void* out, void* workspace,
                          size_t workspace_bytes, cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif  // BQQ_MATMUL_CUDA_H
