// Fuzz harness: the BQQMatMul layout check and packed-tensor element counts
// (plugins/bqq_matmul/bqq_layout.cpp), and the CPU reference reading buffers of exactly those
// counts (bqq_matmul_ref.cpp). Input: six little-endian int32 fields M, K, group_rows,
// group_cols, rank, stacks (missing bytes are zero), one byte for the row count, then bytes
// that fill the buffers. Checks:
//   - bqq_layout_check accepts exactly the ranges of docs/FORMAT.md section 1 and names the
//     field it rejects;
//   - the element counts equal the formula of docs/FORMAT.md section 2 (computed here in
//     128-bit arithmetic) for an accepted layout, and are 0 for a rejected one;
//   - for small accepted layouts, bqq_matmul_reference stays inside buffers of exactly the
//     stated counts (ASan) and rejects negative row counts.
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "bqq_matmul.h"
#include "fuzz_check.h"

namespace {

using i128 = __int128;

int32_t le32(const uint8_t* data, size_t size, size_t offset) {
    uint32_t v = 0;
    for (size_t i = 0; i < 4; ++i) v |= uint32_t{offset + i < size ? data[offset + i] : uint8_t{0}} << (8 * i);
    return static_cast<int32_t>(v);
}

i128 ceil_div(i128 a, i128 b) { return (a + b - 1) / b; }

// Fills n elements from the fuzz input, cycling (or zeros when there is none).
template <typename T>
std::vector<T> fill(size_t n, const uint8_t* bytes, size_t avail) {
    std::vector<T> out(n);
    if (avail == 0) return out;
    for (size_t i = 0; i < n; ++i) {
        uint8_t raw[sizeof(T)];
        for (size_t b = 0; b < sizeof(T); ++b) raw[b] = bytes[(i * sizeof(T) + b) % avail];
        std::memcpy(&out[i], raw, sizeof(T));
    }
    return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    BQQLayout layout{};
    layout.M = le32(data, size, 0);
    layout.K = le32(data, size, 4);
    layout.group_rows = le32(data, size, 8);
    layout.group_cols = le32(data, size, 12);
    layout.rank = le32(data, size, 16);
    layout.stacks = le32(data, size, 20);
    const bool in_range = layout.M >= 1 && layout.K >= 1 && layout.group_rows >= 1 && layout.group_rows <= 4096 &&
                          layout.group_cols >= 1 && layout.group_cols <= 4096 && layout.rank >= 1 &&
                          layout.rank <= 4096 && layout.stacks >= 1 && layout.stacks <= 16;
    // The counts of docs/FORMAT.md section 2, exact in 128 bits; no tensor may exceed 2^59.
    const i128 blocks = in_range ? i128{layout.stacks} * ceil_div(layout.M, layout.group_rows) *
                                       ceil_div(layout.K, layout.group_cols) : 0;
    const i128 words = in_range ? ceil_div(layout.rank, 32) : 0;
    const i128 want_y = blocks * layout.group_rows * words, want_z = blocks * layout.group_cols * words;
    const i128 limit = i128{1} << 59;
    const bool valid = in_range && want_y <= limit && want_z <= limit && blocks * 4 <= limit;
    const BQQStatus status = bqq_layout_check(&layout);
    FUZZ_CHECK((status == BQQ_OK) == valid, "bqq_layout_check returned %d for M=%d K=%d g_r=%d g_c=%d l=%d p=%d",
               static_cast<int>(status), layout.M, layout.K, layout.group_rows, layout.group_cols, layout.rank,
               layout.stacks);
    const int64_t y_words = bqq_y_bits_words(&layout), z_words = bqq_z_bits_words(&layout);
    const int64_t n_scales = bqq_scale_count(&layout);
    if (!valid) {
        FUZZ_CHECK(std::strstr(bqq_last_error(), in_range ? "2^59" : "layout field") != nullptr,
                   "error message: '%s'", bqq_last_error());
        FUZZ_CHECK(y_words == 0 && z_words == 0 && n_scales == 0, "non-zero counts for an invalid layout");
        FUZZ_CHECK(bqq_matmul_reference(&layout, 1, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr) ==
                       BQQ_ERR_INVALID_ARGUMENT, "the reference accepts an invalid layout");
        return 0;
    }
    FUZZ_CHECK(y_words == want_y && z_words == want_z && n_scales == blocks * 4,
               "counts %lld %lld %lld differ from docs/FORMAT.md for M=%d K=%d g_r=%d g_c=%d l=%d p=%d",
               static_cast<long long>(y_words), static_cast<long long>(z_words), static_cast<long long>(n_scales),
               layout.M, layout.K, layout.group_rows, layout.group_cols, layout.rank, layout.stacks);

    // The reference on buffers of exactly the stated sizes; small layouts only (time).
    const int64_t rows = size > 24 ? int64_t{data[24] % 4} - 1 : 1;  // -1 .. 2
    if (want_y + want_z > (1 << 16) || i128{layout.M} + layout.K > 4096) return 0;
    const uint8_t* rest = size > 25 ? data + 25 : data;
    const size_t avail = size > 25 ? size - 25 : 0;
    const size_t n_rows = rows > 0 ? static_cast<size_t>(rows) : 0;
    auto x = fill<float>(n_rows * static_cast<size_t>(layout.K), rest, avail);
    auto y = fill<int32_t>(static_cast<size_t>(y_words), rest, avail);
    auto z = fill<int32_t>(static_cast<size_t>(z_words), rest, avail);
    auto scales = fill<uint16_t>(static_cast<size_t>(n_scales), rest, avail);
    auto bias = fill<float>(static_cast<size_t>(layout.M), rest, avail);
    std::vector<float> out(n_rows * static_cast<size_t>(layout.M));
    // Null for zero rows is fine: nothing may be read.
    auto ptr = [](auto& v) { return v.empty() ? nullptr : v.data(); };
    const BQQStatus ref = bqq_matmul_reference(&layout, rows, ptr(x), y.data(), z.data(), scales.data(),
                                               (avail & 1) ? bias.data() : nullptr, ptr(out));
    FUZZ_CHECK(ref == (rows < 0 ? BQQ_ERR_INVALID_ARGUMENT : BQQ_OK), "reference status %d for rows=%lld: %s",
               static_cast<int>(ref), static_cast<long long>(rows), bqq_last_error());
    return 0;
}
