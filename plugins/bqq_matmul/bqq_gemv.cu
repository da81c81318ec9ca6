// Small-batch BQQMatMul (rows <= 16: decode / GEMV-like, memory bound).
//
// Tiling: one thread block (8 warps) per (64-row tile of a block row i, split of block
// columns). grid.x = R * ceil(g_r / 64) row tiles, grid.y = column splits, chosen so the
// grid holds ~4 blocks per SM. Inside a block, warp w takes block columns j = w, w + 8, ...
// of its split. For each (j, stack k, 32-bit word w of the rank):
//   t-phase: lane q owns bit q of the word and holds t[n][q] = sum_c x[n][c] Z(q, c) for all
//            NR activation rows n in registers; the g_c column words are read coalesced
//            (one per lane) and broadcast with __shfl_sync, the x chunk (32 columns x NR
//            rows, fp32) sits in a warp-private shared buffer.
//   y-phase: a*t is put in a warp-private shared buffer; lane owns output rows r = lane and
//            lane + 32 of the tile and adds a*t[n][q] for every set bit q of Y(r, :),
//            plus the b, c, d terms once per stack (popcount of Y(r, :), sum(t), sum(x_j)).
// Each thread holds acc[2][NR] (2 rows x NR activation rows), t[NR], sum_t[NR], s[NR].
// The 8 warps reduce through shared atomics, then one global fp32 atomicAdd per output per
// block into the workspace [rows, M]; the finalize kernel adds the bias and casts.
//
// Bytes moved (DRAM): every y/z word and every scale exactly once when g_r <= 64 (larger
// g_r re-reads z once per 64-row tile), p*R*C*(g_r+g_c)*L*4 + p*R*C*8 bytes, plus x once per
// row tile (served by L2) and 2 * rows * M * 4 bytes of workspace traffic.
#include "bqq_kernels.cuh"

namespace bqq {
namespace {

constexpr int kWarps = 8;
constexpr int kTileRows = 64;  // output rows per thread block: two per lane
constexpr unsigned kFull = 0xffffffffu;

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(kFull, v, offset);
    return v;
}

template <int NR, typename T>
__global__ void __launch_bounds__(kWarps * 32)
    gemv_kernel(Shape sh, Weights wt, int rows, const T* __restrict__ x, float* __restrict__ acc_out,
                int tiles_per_block, int cols_per_split) {
    __shared__ float xbuf[kWarps][32][NR];  // x chunk: [column][activation row]
    __shared__ float tbuf[kWarps][32][NR];  // a * t for the current word: [bit][activation row]
    __shared__ float red[NR][kTileRows];

    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int i = blockIdx.x / tiles_per_block;
    const int r0 = (blockIdx.x % tiles_per_block) * kTileRows;
    const int64_t j_begin = int64_t(blockIdx.y) * cols_per_split;
    const int64_t j_end = min(int64_t(sh.C), j_begin + cols_per_split);
    for (int e = threadIdx.x; e < NR * kTileRows; e += blockDim.x) (&red[0][0])[e] = 0.f;

    float acc[2][NR];
#pragma unroll
    for (int m = 0; m < 2; ++m)
#pragma unroll
        for (int n = 0; n < NR; ++n) acc[m][n] = 0.f;
    const int lane_shift = 31 - lane;

    // int64 step: j + kWarps must not wrap when C is close to INT32_MAX.
    for (int64_t jj = j_begin + warp; jj < j_end; jj += kWarps) {
        const int j = int(jj);
        const int64_t col0 = int64_t(j) * sh.gc;
        float s[NR];  // sum(x_j) per activation row; columns past K are zero padding
#pragma unroll
        for (int n = 0; n < NR; ++n) s[n] = 0.f;
        for (int c = lane; c < sh.gc && col0 + c < sh.K; c += 32) {
#pragma unroll
            for (int n = 0; n < NR; ++n)
                if (n < rows) s[n] += load_as_float(x + n * int64_t(sh.K) + col0 + c);
        }
#pragma unroll
        for (int n = 0; n < NR; ++n) s[n] = warp_sum(s[n]);

        for (int k = 0; k < sh.p; ++k) {
            const int64_t blk = block_index(sh, k, i, j);
            const float a = __half2float(wt.s[blk * 4 + 0]), b = __half2float(wt.s[blk * 4 + 1]);
            const float cs = __half2float(wt.s[blk * 4 + 2]), d = __half2float(wt.s[blk * 4 + 3]);
            const int32_t* zb = wt.z + blk * sh.gc * sh.L;
            const int32_t* yb = wt.y + blk * sh.gr * sh.L;
            float sum_t[NR];
#pragma unroll
            for (int n = 0; n < NR; ++n) sum_t[n] = 0.f;
            int pop[2] = {0, 0};

            for (int w = 0; w < sh.L; ++w) {
                float t[NR];
#pragma unroll
                for (int n = 0; n < NR; ++n) t[n] = 0.f;
                for (int c0 = 0; c0 < sh.gc; c0 += 32) {
                    const int c = c0 + lane;
                    const bool in_block = c < sh.gc;
                    const bool in_k = in_block && col0 + c < sh.K;
                    const uint32_t zw = in_block ? static_cast<uint32_t>(__ldg(zb + int64_t(c) * sh.L + w)) : 0u;
#pragma unroll
                    for (int n = 0; n < NR; ++n)
                        xbuf[warp][lane][n] =
                            (in_k && n < rows) ? load_as_float(x + n * int64_t(sh.K) + col0 + c) : 0.f;
                    __syncwarp();
                    const int count = min(32, sh.gc - c0);
                    for (int e = 0; e < count; ++e) {
                        const uint32_t word = __shfl_sync(kFull, zw, e);
#pragma unroll
                        for (int n = 0; n < NR; ++n) t[n] += select_bit(word, lane_shift, xbuf[warp][e][n]);
                    }
                    __syncwarp();
                }
                const bool bit_valid = 32 * w + lane < sh.rank;  // padding bits are ignored
#pragma unroll
                for (int n = 0; n < NR; ++n) {
                    if (!bit_valid) t[n] = 0.f;
                    sum_t[n] += t[n];
                    tbuf[warp][lane][n] = a * t[n];
                }
                __syncwarp();
                const uint32_t mask = rank_mask(sh, w);
                uint32_t yw[2];
#pragma unroll
                for (int m = 0; m < 2; ++m) {
                    const int r = r0 + lane + 32 * m;
                    yw[m] = r < sh.gr ? static_cast<uint32_t>(__ldg(yb + int64_t(r) * sh.L + w)) & mask : 0u;
                    pop[m] += __popc(yw[m]);
                }
                // q outer: each a*t value is read from shared memory once for both rows.
#pragma unroll 4
                for (int q = 0; q < 32; ++q) {
#pragma unroll
                    for (int n = 0; n < NR; ++n) {
                        const float tv = tbuf[warp][q][n];
                        acc[0][n] += select_bit(yw[0], 31 - q, tv);
                        acc[1][n] += select_bit(yw[1], 31 - q, tv);
                    }
                }
                __syncwarp();
            }
#pragma unroll
            for (int n = 0; n < NR; ++n) {
                const float block_term = cs * warp_sum(sum_t[n]) + d * s[n];
#pragma unroll
                for (int m = 0; m < 2; ++m) acc[m][n] += b * s[n] * float(pop[m]) + block_term;
            }
        }
    }

    __syncthreads();  // red is zeroed
#pragma unroll
    for (int m = 0; m < 2; ++m)
#pragma unroll
        for (int n = 0; n < NR; ++n)
            if (n < rows && r0 + lane + 32 * m < sh.gr) atomicAdd(&red[n][lane + 32 * m], acc[m][n]);
    __syncthreads();
    for (int e = threadIdx.x; e < NR * kTileRows; e += blockDim.x) {
        const int n = e / kTileRows, rl = e % kTileRows;
        const int r = r0 + rl;
        const int64_t row = int64_t(i) * sh.gr + r;
        if (n < rows && r < sh.gr && row < sh.M) atomicAdd(acc_out + n * int64_t(sh.M) + row, red[n][rl]);
    }
}

template <typename T>
__global__ void finalize_kernel(int64_t count, int M, const float* __restrict__ acc,
                                const T* __restrict__ bias, T* __restrict__ out) {
    for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < count;
         e += int64_t(gridDim.x) * blockDim.x) {
        const float v = acc[e] + (bias ? load_as_float(bias + e % M) : 0.f);
        store_from_float(out + e, v);
    }
}

template <int NR, typename T>
void launch_nr(dim3 grid, const Shape& sh, const Weights& w, int rows, const T* x, float* acc,
               int tiles, int cols_per_split, cudaStream_t stream) {
    gemv_kernel<NR, T><<<grid, kWarps * 32, 0, stream>>>(sh, w, rows, x, acc, tiles, cols_per_split);
}

}  // namespace

template <typename T>
cudaError_t launch_gemv(const Shape& sh, const Weights& w, int rows, const T* x, float* acc,
                        int sm_count, cudaStream_t stream) {
    const int tiles = (sh.gr + kTileRows - 1) / kTileRows;
    const int64_t row_blocks = int64_t(sh.R) * tiles;
    if (row_blocks > 0x7fffffff) return cudaErrorInvalidConfiguration;
    // Enough column splits for ~4 blocks per SM, but at least one block column per warp.
    const int64_t want = (4 * int64_t(sm_count) + row_blocks - 1) / row_blocks;
    const int64_t max_splits = std::min<int64_t>(65535, (int64_t(sh.C) + kWarps - 1) / kWarps);
    const int64_t splits_wanted = std::max<int64_t>(1, std::min(want, max_splits));
    const int cols_per_split = int((sh.C + splits_wanted - 1) / splits_wanted);
    const dim3 grid(unsigned(row_blocks), unsigned((int64_t(sh.C) + cols_per_split - 1) / cols_per_split));
    if (rows <= 1) launch_nr<1>(grid, sh, w, rows, x, acc, tiles, cols_per_split, stream);
    else if (rows <= 2) launch_nr<2>(grid, sh, w, rows, x, acc, tiles, cols_per_split, stream);
    else if (rows <= 4) launch_nr<4>(grid, sh, w, rows, x, acc, tiles, cols_per_split, stream);
    else if (rows <= 8) launch_nr<8>(grid, sh, w, rows, x, acc, tiles, cols_per_split, stream);
    else launch_nr<16>(grid, sh, w, rows, x, acc, tiles, cols_per_split, stream);
    return cudaGetLastError();
}

template <typename T>
cudaError_t launch_finalize(const Shape& sh, int rows, const float* acc, const T* bias, T* out,
                            cudaStream_t stream) {
    const int64_t count = int64_t(rows) * sh.M;
    const int threads = 256;
    const int64_t blocks = std::min<int64_t>((count + threads - 1) / threads, 65535);
    finalize_kernel<T><<<unsigned(blocks), threads, 0, stream>>>(count, sh.M, acc, bias, out);
    return cudaGetLastError();
}

cudaError_t finalize_attributes(cudaFuncAttributes* attr) {
    return cudaFuncGetAttributes(attr, finalize_kernel<float>);
}

template cudaError_t launch_gemv<float>(const Shape&, const Weights&, int, const float*, float*, int,
                                        cudaStream_t);
template cudaError_t launch_gemv<__half>(const Shape&, const Weights&, int, const __half*, float*, int,
                                         cudaStream_t);
template cudaError_t launch_finalize<float>(const Shape&, int, const float*, const float*, float*,
                                            cudaStream_t);
template cudaError_t launch_finalize<__half>(const Shape&, int, const float*, const __half*, __half*,
                                             cudaStream_t);

}  // namespace bqq
