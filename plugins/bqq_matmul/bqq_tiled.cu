// Large-batch BQQMatMul (compute bound): reconstruct W_hat tiles once per thread block in
// shared memory and reuse each tile for a whole tile of activation rows.
//
// Reconstruction (both kernels, what_row8 in bqq_kernels.cuh): the tile is BN = 64 output features x BK = 32 input
// features per K step; thread t builds W_hat[n0 + t/4][k0 + 8*(t%4) .. +8] as
//   sum_k a_k*popc(Y_k[r] & Z_k[c]) + b_k*popc(Y_k[r]) + c_k*popc(Z_k[c]) + d_k
// from the packed words (AND + popcount, no unpacking), in fp32. Words are read through the
// read-only cache: a y word serves 8 columns of a thread, a z word the 64 rows of the tile.
//
// tiled_mma_kernel (sm_80+, fp16 activations): block tile 128 activation rows x 64 features,
//   8 warps as 4 (rows) x 2 (features), each warp 32 x 32 = 2 x 4 mma.sync.m16n8k16 tiles
//   (fp16 inputs, fp32 accumulate); each thread holds 32 fp32 accumulators. Shared memory:
//   x tile 128 x 32 fp16 and W tile 64 x 32 fp16, rows padded to 40 halves (conflict-free
//   fragment loads). The body is compiled only for __CUDA_ARCH__ >= 800; the launcher uses
//   it only when the driver's image for this kernel is sm_80+ PTX/SASS.
// tiled_simt_kernel (any arch, sm_72-safe: no sm_80+ instruction; fp32 or fp16 activations,
//   fp32 math): block tile 64 rows x 64 features, thread holds a 4 x 4 fp32 accumulator;
//   x tile and W tile are kept transposed in shared memory as fp32 [32][68].
//
// Bytes moved per block: its x tile (BM x K activations) once and the packed words of its
// 64 features (~p*(1+...)/8 bytes per weight, L2-resident across the row tiles); W_hat
// itself never leaves shared memory. Rows beyond `rows`, features beyond M and input
// columns beyond K are masked (x beyond K is zero, so padding never changes a result).
#include "bqq_kernels.cuh"

namespace bqq {
namespace {

constexpr int kThreads = 256;
constexpr int BN = 64;  // output features per block
constexpr int BK = 32;  // input features per K step

// ----------------------------------------------------------------------------------------
// Tensor-core path (sm_80+).

constexpr int kMmaRows = 128;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
constexpr int kPad = BK + 8;  // 40 halves = 80 bytes per shared row

__device__ __forceinline__ uint32_t pack_half2(float lo, float hi) {
    const __half2 h = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&h);
}
#endif

__global__ void __launch_bounds__(kThreads)
    tiled_mma_kernel(Layout lay, Weights wt, int64_t rows, const __half* __restrict__ x,
                     const __half* __restrict__ bias, __half* __restrict__ out, bool x_vec_ok) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    __shared__ __align__(16) __half xs[kMmaRows][kPad];
    __shared__ __align__(16) __half ws[BN][kPad];
    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const int warp_m = warp % 4, warp_n = warp / 4;
    const int g = lane / 4, t4 = lane % 4;
    const int64_t m0 = int64_t(blockIdx.x) * kMmaRows;
    const int64_t n0 = int64_t(blockIdx.y) * BN;

    float acc[2][4][4];
#pragma unroll
    for (int mi = 0; mi < 2; ++mi)
#pragma unroll
        for (int ni = 0; ni < 4; ++ni)
#pragma unroll
            for (int q = 0; q < 4; ++q) acc[mi][ni][q] = 0.f;

    const int x_row = tid / 2, x_col = (tid % 2) * 16;  // this thread's 16 halves of the x tile
    const int w_row = tid / 4, w_col = (tid % 4) * 8;   // this thread's 8 W_hat entries
    for (int64_t k0 = 0; k0 < lay.K; k0 += BK) {
        {
            const int64_t row = m0 + x_row, col = k0 + x_col;
            uint4 chunk[2];
            if (x_vec_ok && row < rows && col + 16 <= lay.K) {
                const uint4* src = reinterpret_cast<const uint4*>(x + row * lay.K + col);
                chunk[0] = __ldg(src);
                chunk[1] = __ldg(src + 1);
            } else {
                __half* h = reinterpret_cast<__half*>(chunk);
#pragma unroll
                for (int e = 0; e < 16; ++e)
                    h[e] = (row < rows && col + e < lay.K) ? x[row * lay.K + col + e] : __float2half(0.f);
            }
            uint4* dst = reinterpret_cast<uint4*>(&xs[x_row][x_col]);
            dst[0] = chunk[0];
            dst[1] = chunk[1];
        }
        {
            float v[8];
            what_row8(lay, wt, n0 + w_row, k0 + w_col, v);
            uint4 packed;
            packed.x = pack_half2(v[0], v[1]);
            packed.y = pack_half2(v[2], v[3]);
            packed.z = pack_half2(v[4], v[5]);
            packed.w = pack_half2(v[6], v[7]);
            *reinterpret_cast<uint4*>(&ws[w_row][w_col]) = packed;
        }
        __syncthreads();
#pragma unroll
        for (int ks = 0; ks < BK; ks += 16) {
            uint32_t af[2][4], bf[4][2];
#pragma unroll
            for (int mi = 0; mi < 2; ++mi) {
                const int r = warp_m * 32 + mi * 16 + g;
                af[mi][0] = *reinterpret_cast<const uint32_t*>(&xs[r][ks + 2 * t4]);
                af[mi][1] = *reinterpret_cast<const uint32_t*>(&xs[r + 8][ks + 2 * t4]);
                af[mi][2] = *reinterpret_cast<const uint32_t*>(&xs[r][ks + 2 * t4 + 8]);
                af[mi][3] = *reinterpret_cast<const uint32_t*>(&xs[r + 8][ks + 2 * t4 + 8]);
            }
#pragma unroll
            for (int ni = 0; ni < 4; ++ni) {
                const int n = warp_n * 32 + ni * 8 + g;
                bf[ni][0] = *reinterpret_cast<const uint32_t*>(&ws[n][ks + 2 * t4]);
                bf[ni][1] = *reinterpret_cast<const uint32_t*>(&ws[n][ks + 2 * t4 + 8]);
            }
#pragma unroll
            for (int mi = 0; mi < 2; ++mi)
#pragma unroll
                for (int ni = 0; ni < 4; ++ni)
                    asm volatile(
                        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
                        "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                        : "+f"(acc[mi][ni][0]), "+f"(acc[mi][ni][1]), "+f"(acc[mi][ni][2]),
                          "+f"(acc[mi][ni][3])
                        : "r"(af[mi][0]), "r"(af[mi][1]), "r"(af[mi][2]), "r"(af[mi][3]),
                          "r"(bf[ni][0]), "r"(bf[ni][1]));
        }
        __syncthreads();
    }

#pragma unroll
    for (int mi = 0; mi < 2; ++mi)
#pragma unroll
        for (int ni = 0; ni < 4; ++ni)
#pragma unroll
            for (int q = 0; q < 4; ++q) {
                const int64_t row = m0 + warp_m * 32 + mi * 16 + g + (q >= 2 ? 8 : 0);
                const int64_t col = n0 + warp_n * 32 + ni * 8 + 2 * t4 + (q & 1);
                if (row < rows && col < lay.M) {
                    const float b = bias ? __half2float(bias[col]) : 0.f;
                    out[row * lay.M + col] = __float2half_rn(acc[mi][ni][q] + b);
                }
            }
#else
    // No tensor-core image below sm_80: the launcher never selects this kernel there.
    (void)lay, (void)wt, (void)rows, (void)x, (void)bias, (void)out, (void)x_vec_ok;
#endif
}

// ----------------------------------------------------------------------------------------
// SIMT path (every architecture, fp32 math).

constexpr int kSimtRows = 64;
constexpr int kSimtPad = 68;  // keeps float4 rows 16-byte aligned

template <typename T>
__global__ void __launch_bounds__(kThreads)
    tiled_simt_kernel(Layout lay, Weights wt, int64_t rows, const T* __restrict__ x,
                      const T* __restrict__ bias, T* __restrict__ out) {
    __shared__ __align__(16) float xs[BK][kSimtPad];  // [input column][activation row]
    __shared__ __align__(16) float ws[BK][kSimtPad];  // [input column][feature]
    const int tid = threadIdx.x, ty = tid / 16, tx = tid % 16;
    const int64_t m0 = int64_t(blockIdx.x) * kSimtRows;
    const int64_t n0 = int64_t(blockIdx.y) * BN;
    float acc[4][4] = {};

    const int x_row = tid / 4, x_col = (tid % 4) * 8;
    const int w_row = tid / 4, w_col = (tid % 4) * 8;
    for (int64_t k0 = 0; k0 < lay.K; k0 += BK) {
        const int64_t row = m0 + x_row;
#pragma unroll
        for (int e = 0; e < 8; ++e) {
            const int64_t col = k0 + x_col + e;
            xs[x_col + e][x_row] = (row < rows && col < lay.K) ? load_as_float(x + row * lay.K + col) : 0.f;
        }
        float v[8];
        what_row8(lay, wt, n0 + w_row, k0 + w_col, v);
#pragma unroll
        for (int e = 0; e < 8; ++e) ws[w_col + e][w_row] = v[e];
        __syncthreads();
#pragma unroll 8
        for (int kk = 0; kk < BK; ++kk) {
            const float4 a = *reinterpret_cast<const float4*>(&xs[kk][ty * 4]);
            const float4 b = *reinterpret_cast<const float4*>(&ws[kk][tx * 4]);
            const float av[4] = {a.x, a.y, a.z, a.w}, bv[4] = {b.x, b.y, b.z, b.w};
#pragma unroll
            for (int r = 0; r < 4; ++r)
#pragma unroll
                for (int c = 0; c < 4; ++c) acc[r][c] = fmaf(av[r], bv[c], acc[r][c]);
        }
        __syncthreads();
    }
#pragma unroll
    for (int r = 0; r < 4; ++r)
#pragma unroll
        for (int c = 0; c < 4; ++c) {
            const int64_t row = m0 + ty * 4 + r, col = n0 + tx * 4 + c;
            if (row < rows && col < lay.M)
                store_from_float(out + row * lay.M + col, acc[r][c] + (bias ? load_as_float(bias + col) : 0.f));
        }
}

}  // namespace

template <typename T>
cudaError_t launch_tiled_simt(const Layout& lay, const Weights& w, int64_t rows, const T* x,
                              const T* bias, T* out, cudaStream_t stream) {
    const int64_t row_tiles = (rows + kSimtRows - 1) / kSimtRows;
    const int64_t feature_tiles = (int64_t(lay.M) + BN - 1) / BN;
    if (row_tiles > 0x7fffffff || feature_tiles > 65535) return cudaErrorInvalidConfiguration;
    tiled_simt_kernel<T><<<dim3(unsigned(row_tiles), unsigned(feature_tiles)), kThreads, 0, stream>>>(
        lay, w, rows, x, bias, out);
    return cudaGetLastError();
}

cudaError_t launch_tiled_mma(const Layout& lay, const Weights& w, int64_t rows, const __half* x,
                             const __half* bias, __half* out, cudaStream_t stream) {
    const int64_t row_tiles = (rows + kMmaRows - 1) / kMmaRows;
    const int64_t feature_tiles = (int64_t(lay.M) + BN - 1) / BN;
    if (row_tiles > 0x7fffffff || feature_tiles > 65535) return cudaErrorInvalidConfiguration;
    // 16-byte vector loads of x need 16-byte aligned rows.
    const bool x_vec_ok = lay.K % 8 == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0;
    tiled_mma_kernel<<<dim3(unsigned(row_tiles), unsigned(feature_tiles)), kThreads, 0, stream>>>(
        lay, w, rows, x, bias, out, x_vec_ok);
    return cudaGetLastError();
}

cudaError_t tiled_mma_attributes(cudaFuncAttributes* attr) {
    return cudaFuncGetAttributes(attr, tiled_mma_kernel);
}

template cudaError_t launch_tiled_simt<float>(const Layout&, const Weights&, int64_t, const float*,
                                              const float*, float*, cudaStream_t);
template cudaError_t launch_tiled_simt<__half>(const Layout&, const Weights&, int64_t, const __half*,
                                               const __half*, __half*, cudaStream_t);

}  // namespace bqq
