// Portable small-batch BQQMatMul (rows <= 16): SIMT fp32, no sm_80+ instruction, so it is
// the path for fp32 activations, for GPUs below sm_80 (Turing sm_75; Xavier sm_72 with a
// CUDA 11.4 build) and for every GPU when the portable switch is on (bqq_matmul_cuda.h).
//
// Tiling: one thread block (8 warps) per 64-row tile of a block row i: grid = R * ceil(g_r/64).
// Warp w takes block columns j = w, w + 8, ... For each (j, stack k, 32-bit word w of the
// rank):
//   t-phase: lane q owns bit q of the word and holds t[n][q] = sum_c x[n][c] Z(q, c) for all
//            NR activation rows n in registers; the g_c column words are read coalesced
//            (one per lane) and broadcast with __shfl_sync, the x chunk (32 columns x NR
//            rows, fp32) sits in a warp-private shared buffer.
//   y-phase: a*t is put in a warp-private shared buffer; lane owns output rows r = lane and
//            lane + 32 of the tile and adds a*t[n][q] for every set bit q of Y(r, :),
//            plus the b, c, d terms once per stack (popcount of Y(r, :), sum(t), sum(x_j)).
// Each thread holds acc[2][NR] (2 rows x NR activation rows), t[NR], sum_t[NR], s[NR].
// The 8 warps reduce through shared atomics; the block adds the bias and writes its outputs
// once: one launch, no workspace, no global atomics (results are reproducible run to run
// up to the order of the shared-memory atomics).
//
// Bytes moved (DRAM): every y/z word and every scale once when g_r <= 64 (larger g_r
// re-reads z once per 64-row tile), x once per row tile (served by L2), outputs once.
// Work: ~1.5 warp-instructions per packed byte per activation row (docs/KERNELS.md):
// instruction bound, which is why fp16 on sm_80+ takes bqq_decode.cu instead.
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
    gemv_kernel(Layout lay, Weights wt, int rows, const T* __restrict__ x, const T* __restrict__ bias,
                T* __restrict__ out, int tiles_per_block) {
    __shared__ float xbuf[kWarps][32][NR];  // x chunk: [column][activation row]
    __shared__ float tbuf[kWarps][32][NR];  // a * t for the current word: [bit][activation row]
    __shared__ float red[NR][kTileRows];

    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int i = blockIdx.x / tiles_per_block;
    const int r0 = (blockIdx.x % tiles_per_block) * kTileRows;
    for (int e = threadIdx.x; e < NR * kTileRows; e += blockDim.x) (&red[0][0])[e] = 0.f;

    float acc[2][NR];
#pragma unroll
    for (int m = 0; m < 2; ++m)
#pragma unroll
        for (int n = 0; n < NR; ++n) acc[m][n] = 0.f;
    const int lane_shift = 31 - lane;

    // int64 step: j + kWarps must not wrap when C is close to INT32_MAX.
    for (int64_t jj = warp; jj < lay.C; jj += kWarps) {
        const int j = int(jj);
        const int64_t col0 = int64_t(j) * lay.gc;
        float s[NR];  // sum(x_j) per activation row; columns past K are zero padding
#pragma unroll
        for (int n = 0; n < NR; ++n) s[n] = 0.f;
        for (int c = lane; c < lay.gc && col0 + c < lay.K; c += 32) {
#pragma unroll
            for (int n = 0; n < NR; ++n)
                if (n < rows) s[n] += load_as_float(x + n * int64_t(lay.K) + col0 + c);
        }
#pragma unroll
        for (int n = 0; n < NR; ++n) s[n] = warp_sum(s[n]);

        for (int k = 0; k < lay.p; ++k) {
            const int64_t blk = lay.block(k, i, j);
            const Scales sc = load_scales(lay, wt, blk);
            const float a = sc.a, b = sc.b, cs = sc.c, d = sc.d;
            const int32_t* zb = wt.z + lay.z_col(blk, 0);
            const int32_t* yb = wt.y + lay.y_row(blk, 0);
            float sum_t[NR];
#pragma unroll
            for (int n = 0; n < NR; ++n) sum_t[n] = 0.f;
            int pop[2] = {0, 0};

            for (int w = 0; w < lay.L; ++w) {
                float t[NR];
#pragma unroll
                for (int n = 0; n < NR; ++n) t[n] = 0.f;
                for (int c0 = 0; c0 < lay.gc; c0 += 32) {
                    const int c = c0 + lane;
                    const bool in_block = c < lay.gc;
                    const bool in_k = in_block && col0 + c < lay.K;
                    const uint32_t zw = in_block ? static_cast<uint32_t>(__ldg(zb + int64_t(c) * lay.L + w)) : 0u;
#pragma unroll
                    for (int n = 0; n < NR; ++n)
                        xbuf[warp][lane][n] =
                            (in_k && n < rows) ? load_as_float(x + n * int64_t(lay.K) + col0 + c) : 0.f;
                    __syncwarp();
                    const int count = min(32, lay.gc - c0);
                    for (int e = 0; e < count; ++e) {
                        const uint32_t word = __shfl_sync(kFull, zw, e);
#pragma unroll
                        for (int n = 0; n < NR; ++n) t[n] += select_bit(word, lane_shift, xbuf[warp][e][n]);
                    }
                    __syncwarp();
                }
                const bool bit_valid = 32 * w + lane < lay.rank;  // padding bits are ignored
#pragma unroll
                for (int n = 0; n < NR; ++n) {
                    if (!bit_valid) t[n] = 0.f;
                    sum_t[n] += t[n];
                    tbuf[warp][lane][n] = a * t[n];
                }
                __syncwarp();
                const uint32_t mask = lay.rank_mask(w);
                uint32_t yw[2];
#pragma unroll
                for (int m = 0; m < 2; ++m) {
                    const int r = r0 + lane + 32 * m;
                    yw[m] = r < lay.gr ? static_cast<uint32_t>(__ldg(yb + int64_t(r) * lay.L + w)) & mask : 0u;
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
            if (n < rows && r0 + lane + 32 * m < lay.gr) atomicAdd(&red[n][lane + 32 * m], acc[m][n]);
    __syncthreads();
    for (int e = threadIdx.x; e < NR * kTileRows; e += blockDim.x) {
        const int n = e / kTileRows, rl = e % kTileRows;
        const int64_t row = int64_t(i) * lay.gr + r0 + rl;
        if (n < rows && r0 + rl < lay.gr && row < lay.M)
            store_from_float(out + n * int64_t(lay.M) + row, red[n][rl] + (bias ? load_as_float(bias + row) : 0.f));
    }
}

template <int NR, typename T>
void launch_nr(dim3 grid, const Layout& lay, const Weights& w, int rows, const T* x, const T* bias, T* out,
               int tiles, cudaStream_t stream) {
    gemv_kernel<NR, T><<<grid, kWarps * 32, 0, stream>>>(lay, w, rows, x, bias, out, tiles);
}

}  // namespace

template <typename T>
cudaError_t launch_gemv(const Layout& lay, const Weights& w, int rows, const T* x, const T* bias, T* out,
                        cudaStream_t stream) {
    const int tiles = int(ceil_div(lay.gr, kTileRows));
    const int64_t row_blocks = int64_t(lay.R) * tiles;
    if (row_blocks > 0x7fffffff) return cudaErrorInvalidConfiguration;
    const dim3 grid{static_cast<unsigned>(row_blocks)};
    if (rows <= 1) launch_nr<1>(grid, lay, w, rows, x, bias, out, tiles, stream);
    else if (rows <= 2) launch_nr<2>(grid, lay, w, rows, x, bias, out, tiles, stream);
    else if (rows <= 4) launch_nr<4>(grid, lay, w, rows, x, bias, out, tiles, stream);
    else if (rows <= 8) launch_nr<8>(grid, lay, w, rows, x, bias, out, tiles, stream);
    else launch_nr<16>(grid, lay, w, rows, x, bias, out, tiles, stream);
    return cudaGetLastError();
}

cudaError_t gemv_attributes(cudaFuncAttributes* attr) {
    return cudaFuncGetAttributes(attr, gemv_kernel<1, float>);
}

template cudaError_t launch_gemv<float>(const Layout&, const Weights&, int, const float*, const float*, float*,
                                        cudaStream_t);
template cudaError_t launch_gemv<__half>(const Layout&, const Weights&, int, const __half*, const __half*,
                                         __half*, cudaStream_t);

}  // namespace bqq
