// Device-side pieces shared by the kernel families (bqq_decode.cu, bqq_gemv.cu, bqq_tiled.cu,
// ../bqq_gather/bqq_gather.cu) and the host declarations bqq_launch.cu dispatches to.
// Internal, not part of the C ABI. Layout arithmetic comes from bqq_layout.h only.
#ifndef BQQ_KERNELS_CUH
#define BQQ_KERNELS_CUH

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "bqq_layout.h"

namespace bqq {

// The packed tensors of one layer; S is the scale type (__half for BQQMatMul, __half or
// float for BQQGather).
template <typename S>
struct WeightsT {
    const int32_t* y;  // [p, R, C, gr, L]
    const int32_t* z;  // [p, R, C, gc, L]
    const S* s;        // [p, R, C, 4]  a, b, c, d
};
using Weights = WeightsT<__half>;

struct Scales {
    float a, b, c, d;
};

template <typename S>
__device__ __forceinline__ Scales load_scales(const Layout& lay, const WeightsT<S>& wt, int64_t blk) {
    const S* s = wt.s + lay.scales(blk);
    return {scale_value(__ldg(s)), scale_value(__ldg(s + 1)), scale_value(__ldg(s + 2)), scale_value(__ldg(s + 3))};
}

// All-ones when bit `shift_to_top` (as 31 - bit index) of word is set: a select without branch.
__device__ __forceinline__ float select_bit(uint32_t word, int shift_to_top, float v) {
    const int mask = static_cast<int>(word << shift_to_top) >> 31;
    return __int_as_float(__float_as_int(v) & mask);
}

__device__ __forceinline__ float load_as_float(const float* p) { return __ldg(p); }
__device__ __forceinline__ float load_as_float(const __half* p) { return __half2float(__ldg(p)); }

__device__ __forceinline__ void store_from_float(float* p, float v) { *p = v; }
__device__ __forceinline__ void store_from_float(__half* p, float v) { *p = __float2half_rn(v); }

// The 8 consecutive W_hat entries of feature `row`, input columns col0 .. col0 + 7 (zero past
// K or for rows past M), bit-identical to what_entry (bqq_layout.h). Fast path when the 8
// columns lie in one block column: one Y row, its popcount and one scale load per stack
// serve all 8.
template <typename S>
__device__ inline void what_row8(const Layout& lay, const WeightsT<S>& wt, int64_t row, int64_t col0, float v[8]) {
#pragma unroll
    for (int e = 0; e < 8; ++e) v[e] = 0.f;
    if (row >= lay.M) return;
    const int i = int(row / lay.gr), rr = int(row % lay.gr);
    const int j0 = int(col0 / lay.gc), cc0 = int(col0 % lay.gc);
    if (cc0 + 8 <= lay.gc && col0 + 8 <= lay.K) {
        for (int k = 0; k < lay.p; ++k) {
            const int64_t blk = lay.block(k, i, j0);
            const Scales sc = load_scales(lay, wt, blk);
            const int32_t* yr = wt.y + lay.y_row(blk, rr);
            const int32_t* zr = wt.z + lay.z_col(blk, cc0);
            int ypop = 0;
            for (int w = 0; w < lay.L; ++w) ypop += __popc(static_cast<uint32_t>(__ldg(yr + w)) & lay.rank_mask(w));
            const float row_part = what_row_part(sc.b, sc.d, ypop);
#pragma unroll
            for (int e = 0; e < 8; ++e) {
                int dot = 0, zpop = 0;
                for (int w = 0; w < lay.L; ++w) {
                    const uint32_t zw = static_cast<uint32_t>(__ldg(zr + e * lay.L + w)) & lay.rank_mask(w);
                    dot += __popc(static_cast<uint32_t>(__ldg(yr + w)) & zw);
                    zpop += __popc(zw);
                }
                v[e] += what_term(sc.a, sc.c, row_part, dot, zpop);
            }
        }
        return;
    }
#pragma unroll
    for (int e = 0; e < 8; ++e)
        if (col0 + e < lay.K) v[e] = what_entry(lay, wt.y, wt.z, wt.s, row, col0 + e);
}

// Host-side launchers (each kernel family's file). All enqueue on `stream` and return the
// launch error (cudaGetLastError) to bqq_launch.cu.
template <typename T>
cudaError_t launch_gemv(const Layout& lay, const Weights& w, int rows, const T* x, const T* bias, T* out,
                        cudaStream_t stream);
// Tensor-core decode (rows <= 16, fp16, sm_80+). decode_smem_bytes returns 0 when the
// layout or the weight pointers do not fit this kernel (the launcher then uses launch_gemv);
// decode_configure raises the kernels' dynamic shared-memory limit to max_smem (once per device).
size_t decode_smem_bytes(const Layout& lay, int sm_count, int max_smem, const Weights& w);
cudaError_t decode_configure(int max_smem);
cudaError_t launch_decode(const Layout& lay, const Weights& w, int rows, const __half* x, const __half* bias,
                          __half* out, int sm_count, size_t smem, cudaStream_t stream);
template <typename T>
cudaError_t launch_tiled_simt(const Layout& lay, const Weights& w, int64_t rows, const T* x, const T* bias,
                              T* out, cudaStream_t stream);
cudaError_t launch_tiled_mma(const Layout& lay, const Weights& w, int64_t rows, const __half* x,
                             const __half* bias, __half* out, cudaStream_t stream);
// W_hat rows (plugins/bqq_gather/bqq_gather.cu): out[n, :] = W_hat[row(n), :] for n < count,
// row(n) = idx[n] (negative counts from the end; out of range: zeros and *out_of_range = 1
// when that pointer is set), or row(n) = n when I is void (dequantize: count = M).
template <typename I, typename S>
cudaError_t launch_rows(const Layout& lay, const WeightsT<S>& w, const I* idx, int64_t count, S* out,
                        int32_t* out_of_range, cudaStream_t stream);

// cudaFuncGetAttributes of a kernel of each family: which image (PTX/binary version) the
// driver picked, so the launcher uses tensor-core kernels only where they were compiled for
// sm_80+, and learns early when the library holds no image for the GPU at all.
cudaError_t gemv_attributes(cudaFuncAttributes* attr);
cudaError_t decode_attributes(cudaFuncAttributes* attr);
cudaError_t tiled_mma_attributes(cudaFuncAttributes* attr);

// Dense path (bqq_dense.cu): decode W_hat to fp16 in `workspace` (dense_workspace bytes, any
// alignment) and multiply with cuBLASLt. dense_available() is false in a library built
// without cuBLASLt. `ran` is false when cuBLASLt has no algorithm for these shapes and
// alignments (nothing enqueued: the caller uses the kernels).
bool dense_available();
size_t dense_workspace(const Layout& lay);
BQQStatus launch_dense(const Layout& lay, const Weights& w, int64_t rows, const __half* x, const __half* bias,
                       __half* out, void* workspace, cudaStream_t stream, bool* ran);

// Entry-point helpers of bqq_launch.cu, shared with bqq_gather.cu. Each sets bqq_last_error()
// on failure. device_ready: the current device is usable and this library holds an image for
// it (BQQ_ERR_UNSUPPORTED_ARCH with the one rebuild advice otherwise).
BQQStatus launch_status(cudaError_t err, const char* what);
BQQStatus device_ready();

}  // namespace bqq

#endif  // BQQ_KERNELS_CUH
