// Device-side pieces shared by the BQQMatMul kernel families (bqq_decode.cu, bqq_gemv.cu,
// bqq_tiled.cu, bqq_dequant.cu) and the host declarations bqq_launch.cu dispatches to.
// Internal, not part of the C ABI. Layout arithmetic comes from bqq_layout.h only.
#ifndef BQQ_KERNELS_CUH
#define BQQ_KERNELS_CUH

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "bqq_layout.h"

namespace bqq {

struct Weights {
    const int32_t* y;  // [p, R, C, gr, L]
    const int32_t* z;  // [p, R, C, gc, L]
    const __half* s;   // [p, R, C, 4]  a, b, c, d
};

struct Scales {
    float a, b, c, d;
};

__device__ __forceinline__ Scales load_scales(const Layout& lay, const Weights& wt, int64_t blk) {
    const __half* s = wt.s + lay.scales(blk);
    return {__half2float(s[0]), __half2float(s[1]), __half2float(s[2]), __half2float(s[3])};
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

// W_hat(rr, cc) of block row i, block column j (FORMAT.md section 1), the general path:
// sum_k a_k popc(Y_k[rr] & Z_k[cc]) + b_k popc(Y_k[rr]) + c_k popc(Z_k[cc]) + d_k.
__device__ inline float what_element(const Layout& lay, const Weights& wt, int i, int rr, int j, int cc) {
    float v = 0.f;
    for (int k = 0; k < lay.p; ++k) {
        const int64_t blk = lay.block(k, i, j);
        const Scales sc = load_scales(lay, wt, blk);
        const int32_t* yr = wt.y + lay.y_row(blk, rr);
        const int32_t* zr = wt.z + lay.z_col(blk, cc);
        int dot = 0, ypop = 0, zpop = 0;
        for (int w = 0; w < lay.L; ++w) {
            const uint32_t mask = lay.rank_mask(w);
            const uint32_t yw = static_cast<uint32_t>(__ldg(yr + w)) & mask;
            const uint32_t zw = static_cast<uint32_t>(__ldg(zr + w)) & mask;
            dot += __popc(yw & zw);
            ypop += __popc(yw);
            zpop += __popc(zw);
        }
        v += sc.a * float(dot) + sc.b * float(ypop) + sc.c * float(zpop) + sc.d;
    }
    return v;
}

// The 8 consecutive W_hat entries of feature `row`, input columns col0 .. col0 + 7 (zero past
// K or for rows past M). Fast path when the 8 columns lie in one block column: one Y row and
// one scale load per stack serve all 8.
__device__ inline void what_row8(const Layout& lay, const Weights& wt, int64_t row, int64_t col0, float v[8]) {
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
            const float row_term = sc.b * float(ypop) + sc.d;
#pragma unroll
            for (int e = 0; e < 8; ++e) {
                int dot = 0, zpop = 0;
                for (int w = 0; w < lay.L; ++w) {
                    const uint32_t zw = static_cast<uint32_t>(__ldg(zr + e * lay.L + w)) & lay.rank_mask(w);
                    dot += __popc(static_cast<uint32_t>(__ldg(yr + w)) & zw);
                    zpop += __popc(zw);
                }
                v[e] += sc.a * float(dot) + sc.c * float(zpop) + row_term;
            }
        }
        return;
    }
#pragma unroll
    for (int e = 0; e < 8; ++e) {
        const int64_t col = col0 + e;
        if (col < lay.K) v[e] = what_element(lay, wt, i, rr, int(col / lay.gc), int(col % lay.gc));
    }
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
cudaError_t launch_dequantize(const Layout& lay, const Weights& w, __half* out, cudaStream_t stream);

// cudaFuncGetAttributes of a kernel of each family: which image (PTX/binary version) the
// driver picked, so the launcher uses tensor-core kernels only where they were compiled for
// sm_80+, and learns early when the library holds no image for the GPU at all.
cudaError_t gemv_attributes(cudaFuncAttributes* attr);
cudaError_t decode_attributes(cudaFuncAttributes* attr);
cudaError_t tiled_mma_attributes(cudaFuncAttributes* attr);

}  // namespace bqq

#endif  // BQQ_KERNELS_CUH
