// The layout math of docs/FORMAT.md, once for all C++ and CUDA code: field limits, the
// block grid R x C, words per packed row L, element counts, offsets of a block's rows and
// columns, and the rank mask. Every reader (CPU reference, CUDA kernels, launcher, TensorRT
// plugin) takes these from here; nothing else recomputes them. Header-only, C++17, usable
// from host and device code.
#ifndef BQQ_LAYOUT_H
#define BQQ_LAYOUT_H

#include <stdint.h>

#include "bqq_matmul.h"

#if defined(__CUDACC__)
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

}  // namespace bqq

#endif  // BQQ_LAYOUT_H
