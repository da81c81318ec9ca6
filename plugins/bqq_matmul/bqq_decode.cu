// Tensor-core decode / small batch BQQMatMul: rows <= 16, fp16 activations, sm_80+
// (mma.sync m16n8k16, ldmatrix, cp.async). One launch per call, no workspace.
//
// Per block (i, j) and stack k the product is two small GEMMs on bits (FORMAT.md s.3):
//   phase 1  T[n, q] = sum_c X[n, c] Z(q, c)        A = X (16 rows n x 16 columns c, fp16)
//                                                   B = Z bits (16 c x 8 q per mma)
//   phase 2  y[r, n] += sum_q Y(r, q) B2[q, n]      A = Y bits (16 rows r x 16 q per mma)
//            with B2 = a*T + b*s  (s = sum_c X[n, c]; folds the b*popc(Y_r)*s term in)
//            plus, per activation row, c*sum_q T + d*s (added in the epilogue).
// The phase-1 accumulator D[n][q] lies in registers exactly as phase 2's B fragment needs
// it (thread (g, t) holds columns 2t, 2t+1 of rows g, g+8), so T never leaves registers.
//
// Bits to fp16, 1-2 instructions per two bits, no unpacking loop:
//   phase 1: the two bits of a half2 come from two Z words (columns c, c+1) at one bit
//     position q. PRMT puts byte q/8 of both words into the high bytes of the two halves;
//     LOP3 keeps bit q%8 there (and ORs 1.0 for positions 8, 9, 15). The half is then
//     v(q)*bit (exponent positions 10-14), 1 + v(q)*bit (mantissa positions 8, 9) or
//     1 - 2*bit (sign position 15): all normal numbers, exact. The mma sums them over c;
//     T = alpha(q) * (D - beta(q) * s) undoes scale and offset in fp32 per output column.
//     The q <-> mma column map, q = 4*nt + col/2 + 16*(col%2), is chosen so that phase 2's
//     k pairs are bit pairs (p, p + 16) of one Y word.
//   phase 2: the pair (p, p+16) is one LOP3 away from a half2 (mask, OR 1.0 for mantissa
//     positions), then one HFMA2 maps it to exactly 0 or 1 (the k dimension is summed, so
//     the scale cannot be undone afterwards without fp16 range trouble).
//
// Tiling: a thread block (8 warps) owns MT m-tiles (16*MT output rows) of block row i and
// loops over all block columns j, kWarps of them per pipeline stage: warp w takes column
// j = stage*kWarps + w. A stage holds, per warp slot, the Z words of (i, j) (all stacks),
// the Y words of the block's 16*MT rows, the scales and the 16 x g_c activation tile
// (rows >= `rows` stay zero); kStages stages are in flight through cp.async, 16 B per
// thread per instruction, coalesced. Each thread holds D1[4][4] (T of one stack and word),
// D2[MT][2][4] (its outputs) and the per-thread conversion constants. At the end the warps
// reduce through shared memory and the block writes each output once (+ bias, fp16).
//
// Memory traffic aimed for: every packed word and scale read once from DRAM when the block
// row fits one thread block (MT*16 == g_r); with MT*16 < g_r the Z words of a block row are
// read by g_r/(16*MT) blocks (L2 hits). Activations: 16 x K halves per block (L2).
// Instructions (bench/isa_count.py on sm_90 SASS, docs/KERNELS.md), g = 64, rank 32, per
// block and stack: 0.62 warp-instructions per packed byte at MT = 4 (0.73 at MT = 2, 0.79 at
// MT = 1), for 1 to 16 rows alike (the mma does the per-row work). The T fix-up is one FFMA
// per value (alpha folded into a, beta*s into a per-stack offset), the c*sum(T) term is
// reduced across the quad once at the end, and bits past the rank are cleared in shared
// memory once per block column (mask_past_rank) instead of masked in the hot loops.
#include <cmath>

#include "bqq_kernels.cuh"

namespace bqq {
namespace {

constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
constexpr int kStages = 3;
constexpr int kXPad = 8;  // halves of padding per activation row: conflict-free ldmatrix

// Shared-memory layout of one pipeline stage, in bytes. Per warp slot: Z [p][g_c][L] words,
// Y [p][16*MT][L] words, scales [p][4] halves, X [16][g_c + kXPad] halves.
struct StageLayout {
    int z_words, y_words;         // per slot and stack
    int slot_bytes, stage_bytes;  // 16-byte multiples
    int z_off, y_off, s_off, x_off;

    __host__ __device__ static StageLayout make(const Layout& lay, int mt) {
        StageLayout s{};
        s.z_words = lay.gc * lay.L;
        s.y_words = 16 * mt * lay.L;
        s.z_off = 0;
        s.y_off = s.z_off + lay.p * s.z_words * 4;
        s.s_off = s.y_off + lay.p * s.y_words * 4;
        s.x_off = (s.s_off + lay.p * 8 + 15) / 16 * 16;
        s.slot_bytes = s.x_off + 16 * (lay.gc + kXPad) * 2;
        s.stage_bytes = s.slot_bytes * kWarps;
        return s;
    }
};

struct DecodeArgs {
    Layout lay;
    Weights wt;
    int rows;
    const __half* x;
    const __half* bias;
    __half* out;
    int mt;             // m-tiles (16 rows) per thread block
    int tiles;          // thread blocks per block row: g_r / (16 * mt)
    bool x_async;       // x rows can be copied 16 bytes at a time
};

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool valid) {
    const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem));
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(gmem), "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_async8(void* smem, const void* gmem) {
    const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem));
    asm volatile("cp.async.ca.shared.global [%0], [%1], 8;\n" ::"r"(dst), "l"(gmem));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
__device__ __forceinline__ void cp_async_wait_stages() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(kStages - 2));
}

__device__ __forceinline__ uint32_t prmt(uint32_t a, uint32_t b, uint32_t sel) {
    uint32_t d;
    asm("prmt.b32 %0, %1, %2, %3;\n" : "=r"(d) : "r"(a), "r"(b), "r"(sel));
    return d;
}
// (a & b) | c in one LOP3.
__device__ __forceinline__ uint32_t and_or(uint32_t a, uint32_t b, uint32_t c) {
    uint32_t d;
    asm("lop3.b32 %0, %1, %2, %3, 0xEA;\n" : "=r"(d) : "r"(a), "r"(b), "r"(c));
    return d;
}
__device__ __forceinline__ uint32_t hfma2(uint32_t a, uint32_t b, uint32_t c) {
    uint32_t d;
    asm("fma.rn.f16x2 %0, %1, %2, %3;\n" : "=r"(d) : "r"(a), "r"(b), "r"(c));
    return d;
}
__device__ __forceinline__ uint32_t pack_half2(float lo, float hi) {
    uint32_t d;
    asm("cvt.rn.f16x2.f32 %0, %1, %2;\n" : "=r"(d) : "f"(hi), "f"(lo));
    return d;
}
__device__ __forceinline__ void mma16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&a)[4], const void* smem) {
    const unsigned addr = static_cast<unsigned>(__cvta_generic_to_shared(smem));
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(a[0]), "=r"(a[1]), "=r"(a[2]), "=r"(a[3])
                 : "r"(addr));
}

// Phase 1, B fragment: bit q of columns (c, c+1) -> half2 (see the file comment).
struct Phase1Const {
    uint32_t sel[4], mask[4], bias[4];  // per n-tile, for this thread's B column (g)
    float alpha[4], beta[4];            // per n-tile, for this thread's D columns (2t, 2t+1)
};
// Phase 2, A fragment: bits (p, p+16) of a Y word -> half2 {0, 1}.
struct Phase2Const {
    uint32_t mask[4], bias[4], scale[4], offset[4];  // per (phase-2 step s, slot): index 2*s + slot
};

__device__ __forceinline__ int phase1_bit(int nt, int col) { return 4 * nt + col / 2 + 16 * (col % 2); }

__device__ Phase1Const make_phase1(int g, int t) {
    Phase1Const c;
#pragma unroll
    for (int nt = 0; nt < 4; ++nt) {
        const int q = phase1_bit(nt, g);  // B column g of n-tile nt
        const int byte = q / 8, pos = 8 + q % 8;
        c.sel[nt] = uint32_t(byte) << 4 | uint32_t(4 + byte) << 12;
        c.mask[nt] = 0x00010001u << pos;
        c.bias[nt] = (pos <= 9 || pos == 15) ? 0x3C003C00u : 0u;
        const int qd = phase1_bit(nt, 2 * t);  // D columns 2t, 2t+1: same position class
        const int pd = 8 + qd % 8;
        if (pd <= 9) {  // 1 + bit * 2^(pd-10)
            c.alpha[nt] = float(1 << (10 - pd));
            c.beta[nt] = 1.f;
        } else if (pd <= 14) {  // bit * 2^(2^(pd-10) - 15)
            c.alpha[nt] = exp2f(float(15 - (1 << (pd - 10))));
            c.beta[nt] = 0.f;
        } else {  // 1 - 2 * bit
            c.alpha[nt] = -0.5f;
            c.beta[nt] = 1.f;
        }
    }
    return c;
}

__device__ Phase2Const make_phase2(int t) {
    Phase2Const c;
#pragma unroll
    for (int s = 0; s < 2; ++s)
#pragma unroll
        for (int slot = 0; slot < 2; ++slot) {
            const int p = 8 * s + 4 * slot + t;  // bit pair (p, p + 16), p < 16
            const int e = 2 * s + slot;
            c.mask[e] = 0x00010001u << p;
            float scale, offset;
            if (p <= 9) {  // 1 + bit * 2^(p-10)  ->  bit
                c.bias[e] = 0x3C003C00u;
                scale = float(1 << (10 - p));
                offset = -scale;
            } else if (p <= 14) {  // bit * 2^(2^(p-10) - 15)  ->  bit
                c.bias[e] = 0u;
                scale = exp2f(float(15 - (1 << (p - 10))));
                offset = 0.f;
            } else {  // 1 - 2 * bit  ->  bit
                c.bias[e] = 0x3C003C00u;
                scale = -0.5f;
                offset = 0.5f;
            }
            c.scale[e] = pack_half2(scale, scale);
            c.offset[e] = pack_half2(offset, offset);
        }
    return c;
}

// Warp `slot` copies what it needs for block column j into its slot of a stage: the Z
// words and the Y rows of every stack, the scales and the activation tile (zero past K).
// Each warp owns its slots, so a cp.async wait plus __syncwarp orders the pipeline.
__device__ void load_slot(const DecodeArgs& A, const StageLayout& S, unsigned char* slot, int64_t j, int i,
                          int r0, int lane, int x_lane_n, int x_lane_ch, int x_step_n) {
    const Layout& lay = A.lay;
    for (int k = 0; k < lay.p; ++k) {
        const int64_t blk = lay.block(k, i, j);
        const int32_t* zg = A.wt.z + lay.z_col(blk, 0);
        const int32_t* yg = A.wt.y + lay.y_row(blk, r0);
        for (int ch = lane; ch < S.z_words / 4; ch += 32)
            cp_async16(slot + S.z_off + (k * S.z_words + ch * 4) * 4, zg + ch * 4, true);
        for (int ch = lane; ch < S.y_words / 4; ch += 32)
            cp_async16(slot + S.y_off + (k * S.y_words + ch * 4) * 4, yg + ch * 4, true);
        if (lane == 0) cp_async8(slot + S.s_off + k * 8, A.wt.s + lay.scales(blk));
    }
    const int xc = lay.gc / 8;  // 16-byte chunks per activation row
    if (x_lane_n < 0) return;   // lane idle for the activations
    for (int n = x_lane_n; n < A.rows; n += x_step_n)
        for (int ch = x_lane_ch; ch < xc; ch += 32) {
            __half* dst = reinterpret_cast<__half*>(slot + S.x_off) + n * (lay.gc + kXPad) + ch * 8;
            const int64_t col = j * lay.gc + ch * 8;
            const __half* src = A.x + n * int64_t(lay.K) + col;
            if (A.x_async) {
                cp_async16(dst, col < lay.K ? src : A.x, col < lay.K);
            } else {  // unaligned rows: plain loads (visible after the wait's __syncwarp)
#pragma unroll
                for (int h = 0; h < 8; ++h) dst[h] = col + h < lay.K ? src[h] : __float2half(0.f);
            }
        }
}

// Clears the bits past the rank in the last word of every Z column and Y row of a landed slot
// (zero in valid data; FORMAT.md says every reader ignores them). Layout: Z [p][g_c][L],
// Y [p][16*MT][L] words.
__device__ void mask_past_rank(const Layout& lay, const StageLayout& S, unsigned char* slot, int lane, int mt) {
    const uint32_t mask = lay.rank_mask(lay.L - 1);
    uint32_t* z = reinterpret_cast<uint32_t*>(slot + S.z_off);
    uint32_t* y = reinterpret_cast<uint32_t*>(slot + S.y_off);
    for (int e = lane; e < lay.p * lay.gc; e += 32) z[(e + 1) * lay.L - 1] &= mask;
    for (int e = lane; e < lay.p * 16 * mt; e += 32) y[(e + 1) * lay.L - 1] &= mask;
}

// Loads the 4 Z words of columns c, c+1, c+8, c+9 (word w) from zc = the word w of column c
// in a slot's [g_c][L] words.
template <bool kOneWord>
__device__ __forceinline__ void z_words(const uint32_t* zc, int L, uint32_t (&z)[4]) {
    if (kOneWord) {
        const uint2 lo = *reinterpret_cast<const uint2*>(zc);
        const uint2 hi = *reinterpret_cast<const uint2*>(zc + 8);
        z[0] = lo.x, z[1] = lo.y, z[2] = hi.x, z[3] = hi.y;
    } else {
        z[0] = zc[0], z[1] = zc[L], z[2] = zc[8 * L], z[3] = zc[9 * L];
    }
}

template <int MT, bool kOneWord>
__global__ void __launch_bounds__(kThreads) decode_kernel(DecodeArgs A) {
    extern __shared__ __align__(16) unsigned char smem[];
    const Layout& lay = A.lay;
    const StageLayout S = StageLayout::make(lay, MT);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    const int i = blockIdx.x / A.tiles, r0 = (blockIdx.x % A.tiles) * 16 * MT;
    // Block columns of this warp: j = warp, warp + kWarps, ...; its pipeline slots.
    const int my_cols = lay.C > warp ? int(ceil_div(lay.C - warp, kWarps)) : 0;
    auto slot_of = [&](int it) { return smem + (it % kStages) * S.stage_bytes + warp * S.slot_bytes; };
    // Activation copy: lane -> (row, chunk), computed once (no division in the loop).
    const int xc = lay.gc / 8;
    const int x_step_n = xc <= 32 ? 32 / xc : 1;
    const int x_lane_n = xc <= 32 ? (lane < x_step_n * xc ? lane / xc : -1) : 0;
    const int x_lane_ch = xc <= 32 ? lane % xc : lane;

    // Activation rows >= A.rows stay zero in every slot (the loader never writes them).
    for (int it = 0; it < kStages; ++it)
        for (int n = A.rows; n < 16; ++n) {
            __half* row = reinterpret_cast<__half*>(slot_of(it) + S.x_off) + n * (lay.gc + kXPad);
            for (int c = lane; c < lay.gc + kXPad; c += 32) row[c] = __float2half(0.f);
        }
#pragma unroll
    for (int it = 0; it < kStages - 1; ++it) {
        if (it < my_cols) load_slot(A, S, slot_of(it), warp + int64_t(it) * kWarps, i, r0, lane, x_lane_n, x_lane_ch, x_step_n);
        cp_async_commit();
    }

    const Phase1Const c1 = make_phase1(g, t);
    const Phase2Const c2 = make_phase2(t);
    const uint32_t ones = 0x3C003C00u;
    float acc[MT][2][4] = {};
    // c*sum(T) + d*s for activation rows g and g + 8: extra holds this thread's part of the
    // c*sum(T) term (its own T columns; the 4 threads of a quad are summed once, at the end),
    // dsum the d*s term (the same in all 4).
    float extra[2] = {0.f, 0.f}, dsum[2] = {0.f, 0.f};
    const bool two_halves = A.rows > 8;

    for (int it = 0; it < my_cols; ++it) {
        cp_async_wait_stages();
        __syncwarp();  // column it has landed (all lanes' copies); slot it - 1 is free
        if (lay.rank % 32 != 0) {  // clear the bits past the rank once, so the hot loops need no mask
            mask_past_rank(lay, S, slot_of(it), lane, MT);
            __syncwarp();
        }
        if (it + kStages - 1 < my_cols)
            load_slot(A, S, slot_of(it + kStages - 1), warp + int64_t(it + kStages - 1) * kWarps, i, r0, lane,
                      x_lane_n, x_lane_ch, x_step_n);
        cp_async_commit();

        const unsigned char* slot = slot_of(it);
        const uint32_t* zs = reinterpret_cast<const uint32_t*>(slot + S.z_off);
        const uint32_t* ys = reinterpret_cast<const uint32_t*>(slot + S.y_off);
        const __half* ss = reinterpret_cast<const __half*>(slot + S.s_off);
        const __half* x_lane = reinterpret_cast<const __half*>(slot + S.x_off) + (lane % 16) * (lay.gc + kXPad) +
                               (lane / 16) * 8;  // this lane's ldmatrix row address

        // s = sum(x_j) per activation row (an mma against ones): [0..1] row g, [2..3] row g + 8.
        float srow[4] = {0.f, 0.f, 0.f, 0.f};
        for (int c0 = 0; c0 < lay.gc; c0 += 16) {
            uint32_t xa[4];
            ldmatrix_x4(xa, x_lane + c0);
            mma16816(srow, xa, ones, ones);
        }
        // Per block column: beta*s of this thread's D columns (alpha, beta depend only on the
        // bit position class, the same for both columns 2t, 2t+1 of an n-tile), and
        // kc[h] = sum over them of alpha*beta*s, what sum(T) subtracts from sum(alpha*D).
        float boff[4][2], kc[2] = {0.f, 0.f};
#pragma unroll
        for (int nt = 0; nt < 4; ++nt)
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                boff[nt][h] = c1.beta[nt] * srow[2 * h];
                kc[h] += 2.f * c1.alpha[nt] * boff[nt][h];
            }
        for (int k = 0; k < lay.p; ++k) {
            const float a = __half2float(ss[4 * k]), b = __half2float(ss[4 * k + 1]);
            const float cs = __half2float(ss[4 * k + 2]), d = __half2float(ss[4 * k + 3]);
            // B2 = a*T + b*s = (a*alpha)*D + (b*s - a*alpha*beta*s): one FFMA per value.
            float fa[4], fb[4][2];
#pragma unroll
            for (int nt = 0; nt < 4; ++nt) {
                fa[nt] = a * c1.alpha[nt];
#pragma unroll
                for (int h = 0; h < 2; ++h) fb[nt][h] = fmaf(-fa[nt], boff[nt][h], b * srow[2 * h]);
            }
#pragma unroll
            for (int h = 0; h < 2; ++h) dsum[h] = fmaf(d, srow[2 * h], dsum[h]);
            const uint32_t* zk = zs + k * S.z_words;
            const uint32_t* yk = ys + k * S.y_words;
            for (int w = 0; w < lay.L; ++w) {
                float d1[4][4] = {};
                // Phase 1: 16 columns x 32 bits of Z per step (not unrolled: no remainder copies).
                const __half* xp = x_lane;
                const uint32_t* zc = zk + 2 * t * lay.L + w;
#pragma unroll 1
                for (int c0 = 0; c0 < lay.gc; c0 += 16, xp += 16, zc += 16 * lay.L) {
                    uint32_t xa[4], z[4];  // z: columns c0+2t, +1, +8, +9
                    ldmatrix_x4(xa, xp);
                    z_words<kOneWord>(zc, lay.L, z);
#pragma unroll
                    for (int nt = 0; nt < 4; ++nt) {
                        const uint32_t b0 = and_or(prmt(z[0], z[1], c1.sel[nt]), c1.mask[nt], c1.bias[nt]);
                        const uint32_t b1 = and_or(prmt(z[2], z[3], c1.sel[nt]), c1.mask[nt], c1.bias[nt]);
                        mma16816(d1[nt], xa, b0, b1);
                    }
                }
                // B2 and this thread's part of sum(T) (c term). No rank mask: bits past the
                // rank were cleared in the slot, and a zero Z bit gives D = s (or 0) exactly,
                // i.e. T = 0, while a zero Y bit drops that B2 value in phase 2.
                uint32_t b2[2][2][2];  // [phase-2 step s][row half h][slot]
                float tpart[2] = {-kc[0], -kc[1]};
#pragma unroll
                for (int nt = 0; nt < 4; ++nt) {
#pragma unroll
                    for (int h = 0; h < 2; ++h) {
                        tpart[h] = fmaf(c1.alpha[nt], d1[nt][2 * h] + d1[nt][2 * h + 1], tpart[h]);
                        b2[nt / 2][h][nt % 2] = pack_half2(fmaf(fa[nt], d1[nt][2 * h], fb[nt][h]),
                                                           fmaf(fa[nt], d1[nt][2 * h + 1], fb[nt][h]));
                    }
                }
#pragma unroll
                for (int h = 0; h < 2; ++h) extra[h] = fmaf(cs, tpart[h], extra[h]);
                // Phase 2: 16 output rows per m-tile, 2 steps of 16 bits per word.
#pragma unroll
                for (int mt = 0; mt < MT; ++mt) {
                    const uint32_t ylo = yk[(16 * mt + g) * lay.L + w];
                    const uint32_t yhi = yk[(16 * mt + g + 8) * lay.L + w];
#pragma unroll
                    for (int s = 0; s < 2; ++s) {
                        uint32_t ya[4];
                        ya[0] = hfma2(and_or(ylo, c2.mask[2 * s], c2.bias[2 * s]), c2.scale[2 * s], c2.offset[2 * s]);
                        ya[1] = hfma2(and_or(yhi, c2.mask[2 * s], c2.bias[2 * s]), c2.scale[2 * s], c2.offset[2 * s]);
                        ya[2] = hfma2(and_or(ylo, c2.mask[2 * s + 1], c2.bias[2 * s + 1]), c2.scale[2 * s + 1],
                                      c2.offset[2 * s + 1]);
                        ya[3] = hfma2(and_or(yhi, c2.mask[2 * s + 1], c2.bias[2 * s + 1]), c2.scale[2 * s + 1],
                                      c2.offset[2 * s + 1]);
                        mma16816(acc[mt][0], ya, b2[s][0][0], b2[s][0][1]);
                        if (two_halves) mma16816(acc[mt][1], ya, b2[s][1][0], b2[s][1][1]);
                    }
                }
            }
        }
    }
    asm volatile("cp.async.wait_all;\n" ::);
    __syncthreads();  // every warp is done with the pipeline: its buffers become the reduction buffer

    // Reduction: red[warp][row][n] (16*MT rows x 16 activation rows) and ext[warp][n].
    float* red = reinterpret_cast<float*>(smem);
    float* ext = red + kWarps * 16 * MT * 16;
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int h = 0; h < 2; ++h)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int r = 16 * mt + g + 8 * (e / 2), n = 8 * h + 2 * t + e % 2;
                red[(warp * 16 * MT + r) * 16 + n] = acc[mt][h][e];
            }
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        extra[h] += __shfl_xor_sync(0xffffffffu, extra[h], 1);
        extra[h] += __shfl_xor_sync(0xffffffffu, extra[h], 2);
    }
    if (t == 0) {
        ext[warp * 16 + g] = extra[0] + dsum[0];
        ext[warp * 16 + g + 8] = extra[1] + dsum[1];
    }
    __syncthreads();
    for (int e = threadIdx.x; e < A.rows * 16 * MT; e += kThreads) {
        const int n = e / (16 * MT), r = e % (16 * MT);
        const int64_t row = int64_t(i) * lay.gr + r0 + r;
        if (row >= lay.M) continue;
        float v = A.bias ? __half2float(A.bias[row]) : 0.f;
#pragma unroll
        for (int wp = 0; wp < kWarps; ++wp) v += red[(wp * 16 * MT + r) * 16 + n] + ext[wp * 16 + n];
        A.out[n * int64_t(lay.M) + row] = __float2half_rn(v);
    }
}

#else

template <int MT, bool kOneWord>
__global__ void decode_kernel(DecodeArgs A) {
    // No tensor-core image below sm_80: the launcher never selects this kernel there.
    (void)A;
}

#endif

size_t stage_smem(const Layout& lay, int mt) {
    const StageLayout s = StageLayout::make(lay, mt);
    const size_t pipeline = size_t(s.stage_bytes) * kStages;
    const size_t reduction = size_t(kWarps) * (16 * mt * 16 + 16) * sizeof(float);
    return std::max(pipeline, reduction);
}

// Output rows per thread block (16 * MT). With MT * 16 == g_r every Z word is read and
// converted once; halving MT doubles the blocks (more SMs busy) at the price of one more
// phase-1 pass per block row. Model: time ~ blocks per SM x work per block, work ~ phase 1
// (g_c columns) + phase 2 (16 * MT rows).
int choose_mt(const Layout& lay, int sm_count) {
    const int m16 = lay.gr / 16;
    int best = 1;
    double best_time = 1e300;
    for (int mt : {4, 2, 1}) {
        if (m16 % mt != 0) continue;
        const double blocks = double(lay.R) * (m16 / mt);
        const double time = std::ceil(blocks / sm_count) * (lay.gc + 16.0 * mt);
        if (time < best_time) best_time = time, best = mt;
    }
    return best;
}

template <int MT>
void launch_mt(const DecodeArgs& a, size_t smem, cudaStream_t stream) {
    const dim3 grid(unsigned(int64_t(a.lay.R) * a.tiles));
    if (a.lay.L == 1) decode_kernel<MT, true><<<grid, kThreads, smem, stream>>>(a);
    else decode_kernel<MT, false><<<grid, kThreads, smem, stream>>>(a);
}

}  // namespace

size_t decode_smem_bytes(const Layout& lay, int sm_count, int max_smem, const Weights& w) {
    const bool aligned = reinterpret_cast<uintptr_t>(w.y) % 16 == 0 && reinterpret_cast<uintptr_t>(w.z) % 16 == 0 &&
                         reinterpret_cast<uintptr_t>(w.s) % 8 == 0;
    if (!aligned || lay.gr % 16 != 0 || lay.gc % 16 != 0) return 0;
    const size_t smem = stage_smem(lay, choose_mt(lay, sm_count));
    return smem <= size_t(max_smem) ? smem : 0;
}

cudaError_t launch_decode(const Layout& lay, const Weights& w, int rows, const __half* x, const __half* bias,
                          __half* out, int sm_count, size_t smem, cudaStream_t stream) {
    DecodeArgs a{lay, w, rows, x, bias, out, choose_mt(lay, sm_count), 0,
                 reinterpret_cast<uintptr_t>(x) % 16 == 0 && lay.K % 8 == 0};
    a.tiles = lay.gr / (16 * a.mt);
    if (int64_t(lay.R) * a.tiles > 0x7fffffff) return cudaErrorInvalidConfiguration;
    switch (a.mt) {
        case 4: launch_mt<4>(a, smem, stream); break;
        case 2: launch_mt<2>(a, smem, stream); break;
        default: launch_mt<1>(a, smem, stream); break;
    }
    return cudaGetLastError();
}

cudaError_t decode_attributes(cudaFuncAttributes* attr) { return cudaFuncGetAttributes(attr, decode_kernel<1, true>); }

cudaError_t decode_configure(int max_smem) {
    const void* kernels[] = {reinterpret_cast<const void*>(decode_kernel<1, true>),
                             reinterpret_cast<const void*>(decode_kernel<2, true>),
                             reinterpret_cast<const void*>(decode_kernel<4, true>),
                             reinterpret_cast<const void*>(decode_kernel<1, false>),
                             reinterpret_cast<const void*>(decode_kernel<2, false>),
                             reinterpret_cast<const void*>(decode_kernel<4, false>)};
    for (const void* kernel : kernels)
        if (cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, max_smem);
            err != cudaSuccess)
            return err;
    return cudaSuccess;
}

}  // namespace bqq
