// Device-side pieces shared by the BQQMatMul kernel families (bqq_gemv.cu, bqq_tiled.cu) and
// the host declarations bqq_launch.cu dispatches to. Internal, not part of the C ABI.
#ifndef BQQ_KERNELS_CUH
#define BQQ_KERNELS_CUH

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "bqq_matmul.h"

namespace bqq {

// Layout plus the derived sizes every kernel needs (docs/FORMAT.md section 1).
struct Shape {
    int M, K, gr, gc, rank, p;
    int R, C, L;  // block grid and 32-bit words per packed row
};

struct Weights {
    const int32_t* y;   // [p, R, C, gr, L]
    const int32_t* z;   // [p, R, C, gc, L]
    const __half* s;    // [p, R, C, 4]  a, b, c, d
};

__host__ __device__ inline int64_t block_index(const Shape& sh, int k, int i, int j) {
    return (int64_t(k) * sh.R + i) * sh.C + j;
}

// Bits of word w that lie inside the rank; padding bits past l are ignored, as the
// Python and C++ references do.
__device__ __forceinline__ uint32_t rank_mask(const Shape& sh, int w) {
    const int valid = sh.rank - 32 * w;
    return valid >= 32 ? 0xffffffffu : ((1u << valid) - 1u);
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

// Host-side launchers (each kernel family's file), all enqueue on `stream` and return the
// launch error (cudaGetLastError) to bqq_launch.cu.
template <typename T>
cudaError_t launch_gemv(const Shape& sh, const Weights& w, int rows, const T* x, float* acc,
                        int sm_count, cudaStream_t stream);
template <typename T>
cudaError_t launch_finalize(const Shape& sh, int rows, const float* acc, const T* bias, T* out,
                            cudaStream_t stream);
template <typename T>
cudaError_t launch_tiled_simt(const Shape& sh, const Weights& w, int64_t rows, const T* x,
                              const T* bias, T* out, cudaStream_t stream);
cudaError_t launch_tiled_mma(const Shape& sh, const Weights& w, int64_t rows, const __half* x,
                             const __half* bias, __half* out, cudaStream_t stream);

// cudaFuncGetAttributes of the tensor-core kernel: which image (ptx/binary version) the
// driver picked, so the launcher uses mma only where it was compiled for sm_80+.
cudaError_t tiled_mma_attributes(cudaFuncAttributes* attr);
cudaError_t finalize_attributes(cudaFuncAttributes* attr);

}  // namespace bqq

#endif  // BQQ_KERNELS_CUH
