// CUDA entry points of BQQMatMul: one launch API for every caller (TensorRT plugin, PyTorch
// dispatch, benchmarks). bqq_matmul_cuda picks a path by row count, dtype, GPU and workspace
// (docs/KERNELS.md); bqq_dequantize_cuda writes W_hat as fp16.
#ifndef BQQ_MATMUL_CUDA_H
#define BQQ_MATMUL_CUDA_H

#include <cuda_runtime_api.h>

#include "bqq_matmul.h"

#ifdef __cplusplus
extern "C" {
#endif

// Kernel family a call ran (bqq_matmul_cuda_last_path).
typedef enum BQQKernelPath {
    BQQ_PATH_NONE = 0,            // no kernel launched (error, or rows == 0)
    BQQ_PATH_DECODE_TC = 1,       // rows <= 16, fp16, sm_80+: bqq_decode.cu (tensor cores)
    BQQ_PATH_GEMV_PORTABLE = 2,   // rows <= 16 otherwise: bqq_gemv.cu (SIMT, any GPU)
    BQQ_PATH_TILED_MMA = 3,       // rows > 16, fp16, sm_80+: bqq_tiled.cu (mma.sync)
    BQQ_PATH_TILED_PORTABLE = 4,  // rows > 16 otherwise: bqq_tiled.cu (SIMT, any GPU)
    BQQ_PATH_DENSE = 5,           // rows >= the dense threshold, fp16: bqq_dense.cu (W_hat + cuBLASLt)
} BQQKernelPath;

// Workspace bytes that let bqq_matmul_cuda take the dense path for `rows` rows: 2*M*K for
// W_hat plus cuBLASLt's share when the dense path applies (fp16, rows at or above the dense
// threshold, built with cuBLASLt, portable switch off), else 0. Never decreases as rows
// grows, so the value for a profile's largest row count serves every smaller one.
size_t bqq_matmul_cuda_workspace(const BQQLayout* layout, int64_t rows, BQQDataType dtype);

// out[rows, M] = x[rows, K] W_hat^T + bias, all device pointers, enqueued on stream. x, bias
// (optional, NULL for none) and out have type dtype; scales are fp16; y_bits and z_bits are
// the int32 words of docs/FORMAT.md (INT32 [..., L] in ONNX and TensorRT). The kernel paths
// are one launch without scratch memory; the dense path (two launches) runs only when
// workspace holds at least bqq_matmul_cuda_workspace(layout, rows, dtype) bytes, otherwise
// the kernels serve. Returns BQQ_ERR_UNSUPPORTED_ARCH when the library holds no kernel for the
// running GPU; bqq_last_error() then says which architectures it holds and how to rebuild
// (the one place that advice is written: callers pass the message on as it is).
BQQStatus bqq_matmul_cuda(const BQQLayout* layout, int64_t rows, BQQDataType dtype,
                          const void* x, const int32_t* y_bits, const int32_t* z_bits,
                          const void* scales, const void* bias, void* out, void* workspace,
                          size_t workspace_bytes, cudaStream_t stream);

// out[M, K] (fp16, device) = W_hat, enqueued on stream.
BQQStatus bqq_dequantize_cuda(const BQQLayout* layout, const int32_t* y_bits, const int32_t* z_bits,
                              const void* scales, void* out, cudaStream_t stream);

// Portable switch: when on, bqq_matmul_cuda uses only the SIMT kernels (no sm_80+
// instruction: the Turing sm_75 / Xavier sm_72 code path) on any GPU, so a newer GPU can test
// that path. Process-wide; initially on iff the environment variable BQQ_CUDA_PORTABLE is
// "1" when the library is first used. Returns the previous setting.
int bqq_matmul_cuda_set_portable(int enable);

// The kernel family of the last successful bqq_matmul_cuda call on this thread.
BQQKernelPath bqq_matmul_cuda_last_path(void);

// Dense-path threshold: fp16 calls with at least this many rows (and the workspace) take the
// dense path. Process-wide; starts at kDenseMinRows (bqq_launch.cu). set returns the previous
// value, or -1 (value unchanged, bqq_last_error set) for rows < 1; INT64_MAX turns the dense
// path off. The query returns -1 when the library was built without cuBLASLt.
int64_t bqq_matmul_cuda_set_dense_min_rows(int64_t rows);
int64_t bqq_matmul_cuda_dense_min_rows(void);

#ifdef __cplusplus
}
#endif

#endif  // BQQ_MATMUL_CUDA_H
