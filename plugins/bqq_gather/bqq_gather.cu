// BQQGather on the GPU (bqq_gather_cuda.h): checks, then one launch of the W_hat row kernel
// (plugins/bqq_matmul/bqq_rows.cu) with row(n) = indices[n].
//
// Tiling: one warp per output row; the warp resolves its index once and its 32 lanes build
// 8 consecutive entries each per step (one Y word and its popcount plus 8 Z words per lane
// and stack), fp32, rounded once to the output type. Out-of-range rows are zeros, the tables
// untouched (bqq_gather.h).
// Traffic per looked-up row, L = 1: p*C*4 B of Y, ~4*p*K B of Z (the Z words of its block
// row, shared with every other row of that block row: L2 serves repeated lookups), p*C*4
// scales; K values written. A lookup is launch- and latency-bound, not bandwidth-bound.
#include "bqq_gather_cuda.h"
#include "bqq_gather_internal.h"
#include "bqq_kernels.cuh"

namespace {

template <typename I>
BQQStatus gather_typed(const bqq::Layout& lay, int64_t count, const I* idx, BQQDataType dtype, const int32_t* y,
                       const int32_t* z, const void* scales, void* out, int32_t* out_of_range, cudaStream_t stream) {
    cudaError_t err;
    if (dtype == BQQ_FLOAT32)
        err = bqq::launch_rows(lay, bqq::WeightsT<float>{y, z, static_cast<const float*>(scales)}, idx, count,
                               static_cast<float*>(out), out_of_range, stream);
    else
        err = bqq::launch_rows(lay, bqq::WeightsT<__half>{y, z, static_cast<const __half*>(scales)}, idx, count,
                               static_cast<__half*>(out), out_of_range, stream);
    return bqq::launch_status(err, "BQQ gather kernel launch");
}

}  // namespace

extern "C" BQQStatus bqq_gather_cuda(const BQQLayout* layout, int64_t count, BQQIndexType index_type,
                                     const void* indices, BQQDataType dtype, const int32_t* y_bits,
                                     const int32_t* z_bits, const void* scales, void* out, int32_t* out_of_range,
                                     cudaStream_t stream) {
    bool done = false;
    if (BQQStatus st = bqq::check_gather_args(layout, count, index_type, indices, dtype, y_bits, z_bits, scales, out,
                                              &done);
        st != BQQ_OK || done)
        return st;
    if (out_of_range != nullptr && bqq_check_pointer("out_of_range", out_of_range, 4) != BQQ_OK)
        return BQQ_ERR_INVALID_ARGUMENT;
    if (BQQStatus st = bqq::device_ready(); st != BQQ_OK) return st;
    const bqq::Layout lay = bqq::Layout::from(*layout);
    if (index_type == BQQ_INDEX_INT32)
        return gather_typed(lay, count, static_cast<const int32_t*>(indices), dtype, y_bits, z_bits, scales, out,
                            out_of_range, stream);
    return gather_typed(lay, count, static_cast<const int64_t*>(indices), dtype, y_bits, z_bits, scales, out,
                        out_of_range, stream);
}
