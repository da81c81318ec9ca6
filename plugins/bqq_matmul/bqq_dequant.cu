// W_hat to fp16, [M, K] row-major: the first half of "decode to fp16 + dense GEMM", which
// pays off once enough rows share one decode (bench/kernel_bench.py measures where).
// Tiling: one thread per 8 consecutive entries of a row (what_row8, bqq_kernels.cuh, the
// same reconstruction as the tiled kernels), grid-stride. Traffic: packed words once per
// 8 entries through the read-only cache, 2*M*K bytes written (16-byte stores when K % 8 == 0
// and the output is 16-byte aligned).
#include "bqq_kernels.cuh"

namespace bqq {
namespace {

__global__ void dequantize_kernel(Layout lay, Weights wt, __half* __restrict__ out, bool vec) {
    const int64_t per_row = ceil_div(lay.K, 8);
    const int64_t total = int64_t(lay.M) * per_row;
    for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total; e += int64_t(gridDim.x) * blockDim.x) {
        const int64_t row = e / per_row, col0 = (e % per_row) * 8;
        float v[8];
        what_row8(lay, wt, row, col0, v);
        __half* dst = out + row * lay.K + col0;
        if (vec) {
            uint4 packed;
            __half2* h = reinterpret_cast<__half2*>(&packed);
#pragma unroll
            for (int q = 0; q < 4; ++q) h[q] = __floats2half2_rn(v[2 * q], v[2 * q + 1]);
            *reinterpret_cast<uint4*>(dst) = packed;
        } else {
            for (int q = 0; q < 8 && col0 + q < lay.K; ++q) dst[q] = __float2half_rn(v[q]);
        }
    }
}

}  // namespace

cudaError_t launch_dequantize(const Layout& lay, const Weights& w, __half* out, cudaStream_t stream) {
    const int64_t total = int64_t(lay.M) * ceil_div(lay.K, 8);
    const int threads = 256;
    const int64_t blocks = std::min<int64_t>(ceil_div(total, threads), 1 << 20);
    const bool vec = lay.K % 8 == 0 && reinterpret_cast<uintptr_t>(out) % 16 == 0;
    dequantize_kernel<<<unsigned(blocks), threads, 0, stream>>>(lay, w, out, vec);
    return cudaGetLastError();
}

}  // namespace bqq
