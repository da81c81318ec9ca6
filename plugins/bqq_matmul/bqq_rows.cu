// The W_hat row kernel (launch_rows, bqq_kernels.cuh): out[n, :] = W_hat[row(n), :]. Its
// callers: BQQGather (../bqq_gather/bqq_gather.cu: row(n) = indices[n]), bqq_dequantize_cuda
// and the dense path's decode (bqq_dense.cu: row(n) = n, all M rows, fp16).
//
// Tiling: one warp per output row n (8 warps per thread block, grid-stride over rows). The
// warp resolves its row r once (an index: negative from the end, out of range -> zeros and
// the flag, no table read); lane q then builds the entries 8q .. 8q+7, 8q+256 .. of
// W_hat[r, :] with what_row8: for each block column j and stack k (block row i = r / g_r,
// row rr = r % g_r),
//   W[r, j*g_c + c] = a*popc(Y_k[rr] & Z_k[c]) + b*popc(Y_k[rr]) + c*popc(Z_k[c]) + d
// from one Y row word (and its popcount) and 8 Z column words per lane and stack, in fp32,
// bit-identical to the CPU reference (bqq::what_entry, bqq_layout.h).
//
// Traffic per output row, L = 1: reads p*C*4 B of Y, p*C*g_c*4 B ~= 4*p*K B of Z (the Z
// words of the whole block row i, shared by its g_r rows: repeated lookups in one block row
// hit L2) and p*C*4 scales; writes K values, 16-byte stores when K % 8 == 0 and `out` is
// 16-byte aligned. Per entry and stack ~9 thread-instructions (AND, 2 POPC, 2 I2F, 2 FFMA,
// FADD, LDG). An embedding lookup is a few hundred rows at most, so there the kernel is
// launch- and latency-bound; for dequantize (M rows) it writes 2*M*K bytes, close to copy
// bandwidth.
#include <type_traits>

#include "bqq_kernels.cuh"

namespace bqq {
namespace {

constexpr int kWarps = 8;
constexpr int kEntries = 8;  // W_hat entries per lane per step (what_row8)

__device__ __forceinline__ void store8(float* dst, const float (&v)[kEntries], bool vec, int64_t valid) {
    if (vec) {
        reinterpret_cast<float4*>(dst)[0] = make_float4(v[0], v[1], v[2], v[3]);
        reinterpret_cast<float4*>(dst)[1] = make_float4(v[4], v[5], v[6], v[7]);
    } else {
        for (int e = 0; e < kEntries && e < valid; ++e) dst[e] = v[e];
    }
}

__device__ __forceinline__ void store8(__half* dst, const float (&v)[kEntries], bool vec, int64_t valid) {
    if (vec) {
        uint4 packed;
        __half2* h = reinterpret_cast<__half2*>(&packed);
#pragma unroll
        for (int q = 0; q < 4; ++q) h[q] = __floats2half2_rn(v[2 * q], v[2 * q + 1]);
        *reinterpret_cast<uint4*>(dst) = packed;
    } else {
        for (int e = 0; e < kEntries && e < valid; ++e) dst[e] = __float2half_rn(v[e]);
    }
}

// I: index type (int32_t, int64_t), or void for row n = n. S: scale and output type.
template <typename I, typename S>
__global__ void __launch_bounds__(kWarps * 32)
    rows_kernel(Layout lay, WeightsT<S> wt, const I* __restrict__ idx, int64_t count, S* __restrict__ out,
                int32_t* out_of_range, bool vec) {
    const int lane = threadIdx.x % 32;
    for (int64_t n = blockIdx.x * int64_t(kWarps) + threadIdx.x / 32; n < count; n += int64_t(gridDim.x) * kWarps) {
        int64_t row = n;
        if constexpr (!std::is_void<I>::value) row = gather_row(int64_t(idx[n]), lay.M);
        if (row < 0 && lane == 0 && out_of_range != nullptr) *out_of_range = 1;
        S* dst = out + n * lay.K;
        for (int64_t col0 = int64_t(lane) * kEntries; col0 < lay.K; col0 += 32 * kEntries) {
            float v[kEntries] = {};
            if (row >= 0) what_row8(lay, wt, row, col0, v);
            store8(dst + col0, v, vec, lay.K - col0);
        }
    }
}

}  // namespace

template <typename I, typename S>
cudaError_t launch_rows(const Layout& lay, const WeightsT<S>& w, const I* idx, int64_t count, S* out,
                        int32_t* out_of_range, cudaStream_t stream) {
    const int64_t blocks = std::min<int64_t>(ceil_div(count, kWarps), 1 << 20);
    const bool vec = lay.K % kEntries == 0 && reinterpret_cast<uintptr_t>(out) % 16 == 0;
    rows_kernel<I, S><<<unsigned(blocks), kWarps * 32, 0, stream>>>(lay, w, idx, count, out, out_of_range, vec);
    return cudaGetLastError();
}

template cudaError_t launch_rows<void, __half>(const Layout&, const WeightsT<__half>&, const void*, int64_t, __half*,
                                               int32_t*, cudaStream_t);
template cudaError_t launch_rows<int32_t, float>(const Layout&, const WeightsT<float>&, const int32_t*, int64_t,
                                                 float*, int32_t*, cudaStream_t);
template cudaError_t launch_rows<int32_t, __half>(const Layout&, const WeightsT<__half>&, const int32_t*, int64_t,
                                                  __half*, int32_t*, cudaStream_t);
template cudaError_t launch_rows<int64_t, float>(const Layout&, const WeightsT<float>&, const int64_t*, int64_t,
                                                 float*, int32_t*, cudaStream_t);
template cudaError_t launch_rows<int64_t, __half>(const Layout&, const WeightsT<__half>&, const int64_t*, int64_t,
                                                  __half*, int32_t*, cudaStream_t);

}  // namespace bqq

