// CUDA entry point of BQQGather (bqq_gather.h has the contract): one launch, no workspace.
#ifndef BQQ_GATHER_CUDA_H
#define BQQ_GATHER_CUDA_H

#include <cuda_runtime_api.h>

#include "bqq_gather.h"

#ifdef __cplusplus
extern "C" {
#endif

// out[count, K] (device, dtype) = W_hat rows picked by indices (device, index_type), enqueued
// on stream; scales (device) have type dtype. out_of_range: a device int32 or NULL (see
// bqq_gather.h). Checks every argument before touching the GPU; BQQ_ERR_UNSUPPORTED_ARCH
// carries the same rebuild advice as bqq_matmul_cuda.
BQQStatus bqq_gather_cuda(const BQQLayout* layout, int64_t count, BQQIndexType index_type,
                          const void* indices, BQQDataType dtype, const int32_t* y_bits,
                          const int32_t* z_bits, const void* scales, void* out,
                          int32_t* out_of_range, cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif  // BQQ_GATHER_CUDA_H
