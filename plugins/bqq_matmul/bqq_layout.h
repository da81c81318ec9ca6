// The layout math of docs/FORMAT.md, once for all C++ and CUDA code: field limits, the
// block grid R x C, words per packed row L, element counts, offsets of a block's rows and
// columns, and the rank mask. Every reader (CPU reference, CUDA kernels, launcher, TensorRT
// plugin) takes these from here; nothing else recomputes them. Header-only, C++17, usable
// from host and device code.
#ifndef BQQ_LAYOUT_H
#define BQQ_LAYOUT_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "bqq_matmul.h"

#if defined(__CUDACC__)
#include <cuda_fp16.h>
#define BQQ_HD __host__ __device__
#else
#define BQQ_HD
#endif

namespace bqq {

// docs/FORMAT.md section 1.
constexpr int32_t kMaxGroup = 4096;
constexpr int32_t kMaxRank = 4096;
constexpr int32_t kMaxStacks = 16;
constexpr int32_t kWordBits = 32;  // bits per packed word (int32)
// Most elements one packed tensor may hold: its byte count, and every offset into it, then
// fit int64 with room to spare (docs/FORMAT.md section 1).
constexpr int64_t kMaxTensorElements = int64_t(1) << 59;

BQQ_HD constexpr int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// A field of BQQLayout with its allowed range [1, hi].
struct FieldRange {
    const char* name;
    int32_t value;
    int32_t hi;
};

// The six fields in BQQLayout order with their limits; bqq_layout_check reports the first
// one outside its range.
inline void field_ranges(const BQQLayout& l, FieldRange (&out)[6]) {
    out[0] = {"M", l.M, INT32_MAX};
    out[1] = {"K", l.K, INT32_MAX};
    out[2] = {"group_rows", l.group_rows, kMaxGroup};
    out[3] = {"group_cols", l.group_cols, kMaxGroup};
    out[4] = {"rank", l.rank, kMaxRank};
    out[5] = {"stacks", l.stacks, kMaxStacks};
}

// A checked BQQLayout with its derived sizes. Build it only from a layout that passed
// bqq_layout_check: the arithmetic assumes every field in range.
struct Layout {
    int32_t M, K, gr, gc, rank, p;
    int32_t R, C, L;  // block rows, block columns, 32-bit words per packed row

    BQQ_HD static constexpr Layout from(const BQQLayout& l) {
        return Layout{l.M, l.K, l.group_rows, l.group_cols, l.rank, l.stacks,
                      static_cast<int32_t>(ceil_div(l.M, l.group_rows)),
                      static_cast<int32_t>(ceil_div(l.K, l.group_cols)),
                      static_cast<int32_t>(ceil_div(l.rank, kWordBits))};
    }

    // Number of (stack, block row, block column) blocks: the leading dims [p, R, C].
    BQQ_HD constexpr int64_t blocks() const { return int64_t(p) * R * C; }
    // Index of block (stack k, block row i, block column j) in [p, R, C] order.
    BQQ_HD constexpr int64_t block(int64_t k, int64_t i, int64_t j) const { return (k * R + i) * C + j; }

    // Element counts of the packed tensors (docs/FORMAT.md section 2).
    BQQ_HD constexpr int64_t y_words() const { return blocks() * gr * L; }
    BQQ_HD constexpr int64_t z_words() const { return blocks() * gc * L; }
    BQQ_HD constexpr int64_t scale_count() const { return blocks() * 4; }
    // One packed row: L int32 words, i.e. 4 * L bytes (the same bytes as INT8 [..., 4L]).
    BQQ_HD constexpr int64_t row_bytes() const { return int64_t(L) * 4; }

    // Word offsets: row r of Y and column c of Z (Z stored transposed) of block blk.
    BQQ_HD constexpr int64_t y_row(int64_t blk, int64_t r) const { return (blk * gr + r) * L; }
    BQQ_HD constexpr int64_t z_col(int64_t blk, int64_t c) const { return (blk * gc + c) * L; }
    // Offset of the scales a, b, c, d of block blk.
    BQQ_HD constexpr int64_t scales(int64_t blk) const { return blk * 4; }

    // Bits of word w that lie inside the rank; bits >= rank are padding, ignored by every
    // reader (they are zero in valid data).
    BQQ_HD constexpr uint32_t rank_mask(int64_t w) const {
        return rank - kWordBits * w >= kWordBits ? 0xffffffffu : ((1u << (rank - kWordBits * w)) - 1u);
    }
};

// ---------------------------------------------------------------------------------------
// W_hat entries (docs/FORMAT.md section 1), host and device. Every reader that rebuilds
// entries (CPU gather reference, CUDA gather, dequantize, tiled kernels) evaluates them with
// these functions in this order, so their fp32 results agree bit for bit:
//   W_hat(r, c) = sum over stacks k = 0, 1, .. of  a*dot + (c*zpop + (b*ypop + d))
// with dot = popc(Y_k(r) & Z_k(c)), ypop = popc(Y_k(r)), zpop = popc(Z_k(c)), each product
// and sum one fused multiply-add. With fp16 scales every product is exact in fp32 (11-bit
// mantissa times an integer <= 4096 fits 24 bits): only the additions round.

BQQ_HD inline int popcount(uint32_t v) {
#if defined(__CUDA_ARCH__)
    return __popc(v);
#else
    return __builtin_popcount(v);
#endif
}

// Scale values: fp32 as is; fp16 as a bit pattern (host) or __half (device), widened exactly.
BQQ_HD inline float scale_value(float s) { return s; }
BQQ_HD inline float scale_value(uint16_t h) {
    const uint32_t sign = uint32_t(h >> 15) << 31, exponent = (h >> 10) & 0x1fu, mantissa = h & 0x3ffu;
    if (exponent == 0) {  // zero or subnormal: mantissa * 2^-24, exact
        const float v = float(mantissa) * 5.9604644775390625e-8f;
        return sign ? -v : v;
    }
    // Normal: rebias 15 -> 127; inf/NaN: all-ones exponent, mantissa kept.
    const uint32_t bits = sign | (exponent == 31 ? 0xffu << 23 : (exponent + 112u) << 23) | mantissa << 13;
#if defined(__CUDA_ARCH__)
    return __uint_as_float(bits);
#else
    float v;
    memcpy(&v, &bits, sizeof v);
    return v;
#endif
}
#if defined(__CUDACC__)
BQQ_HD inline float scale_value(__half s) { return __half2float(s); }
#endif

// The part of one stack's term that depends on the row only: b*ypop + d.
BQQ_HD inline float what_row_part(float b, float d, int ypop) { return fmaf(b, float(ypop), d); }
// One stack's term of W_hat(r, c) given its row part.
BQQ_HD inline float what_term(float a, float c, float row_part, int dot, int zpop) {
    return fmaf(a, float(dot), fmaf(c, float(zpop), row_part));
}

// W_hat(row, col) for row < M, col < K, read element by element from the packed words
// (the general path; the kernels' fast paths amortise the Y word and the scales over
// several columns with the same what_row_part / what_term).
template <typename S>
BQQ_HD inline float what_entry(const Layout& lay, const int32_t* y, const int32_t* z, const S* s, int64_t row,
                               int64_t col) {
    const int64_t i = row / lay.gr, rr = row % lay.gr, j = col / lay.gc, cc = col % lay.gc;
    float v = 0.f;
    for (int64_t k = 0; k < lay.p; ++k) {
        const int64_t blk = lay.block(k, i, j);
        const S* sc = s + lay.scales(blk);
        const int32_t* yr = y + lay.y_row(blk, rr);
        const int32_t* zr = z + lay.z_col(blk, cc);
        int dot = 0, ypop = 0, zpop = 0;
        for (int64_t w = 0; w < lay.L; ++w) {
            const uint32_t mask = lay.rank_mask(w);
            const uint32_t yw = static_cast<uint32_t>(yr[w]) & mask, zw = static_cast<uint32_t>(zr[w]) & mask;
            dot += popcount(yw & zw);
            ypop += popcount(yw);
            zpop += popcount(zw);
        }
        v += what_term(scale_value(sc[0]), scale_value(sc[2]), what_row_part(scale_value(sc[1]), scale_value(sc[3]), ypop),
                       dot, zpop);
    }
    return v;
}

// BQQGather's index rule: the table row an index names (negative: from the end, as ONNX
// Gather), or -1 when it is outside [-M, M). No overflow for any int64 value.
BQQ_HD inline int64_t gather_row(int64_t index, int32_t M) {
    if (index < 0) index += M;
    return index >= 0 && index < M ? index : -1;
}

}  // namespace bqq

#endif  // BQQ_LAYOUT_H
