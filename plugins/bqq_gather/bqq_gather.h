// BQQGather: Y[n, :] = W_hat[indices[n], :], an embedding lookup in a table W [M, K] packed
// exactly as a BQQMatMul weight (docs/FORMAT.md, version 1; the node contract is
// BQQGather_contract.json beside this file). Plain C ABI shared by the CPU reference, the
// CUDA kernel (bqq_gather_cuda.h), the TensorRT plugin and the Python ctypes binding. Layout,
// status codes and data types are those of bqq_matmul.h.
//
// Indices: int32 or int64, any value. An index i with -M <= i < 0 means row i + M (as ONNX
// Gather). An index outside [-M, M) never reads outside the tables: its output row is all
// zeros, and *out_of_range is set to 1 when that pointer is not NULL (it is never cleared:
// the caller zeroes it). The call itself still succeeds.
#ifndef BQQ_GATHER_H
#define BQQ_GATHER_H

#include <stdint.h>

#include "bqq_matmul.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum BQQIndexType {
    BQQ_INDEX_INT32 = 0,
    BQQ_INDEX_INT64 = 1,
} BQQIndexType;

// CPU reference (the oracle of bqq_gather_cuda), host pointers. indices: `count` values of
// index_type; scales: [p, R, C, 4] of dtype (BQQ_FLOAT16: IEEE binary16 bit patterns);
// out: [count, K] of the same dtype. Each entry is computed in fp32 exactly as the CUDA
// kernel does (bqq::what_entry in bqq_layout.h), then rounded to dtype (round to nearest
// even), so both agree bit for bit.
BQQStatus bqq_gather_reference(const BQQLayout* layout, int64_t count, BQQIndexType index_type,
                               const void* indices, BQQDataType dtype, const int32_t* y_bits,
                               const int32_t* z_bits, const void* scales, void* out,
                               int32_t* out_of_range);

#ifdef __cplusplus
}
#endif

#endif  // BQQ_GATHER_H
