// C ABI of the layout (bqq_matmul.h): field check, packed-tensor element counts, the
// thread-local error message and the pointer check of every entry point. The arithmetic is
// bqq_layout.h's. Compiled into both the CPU reference and the CUDA library.
#include <cstdarg>
#include <cstdio>

#include "bqq_internal.h"
#include "bqq_layout.h"

namespace {

thread_local char g_last_error[1024] = "";

}  // namespace

extern "C" {

void bqq_set_error(const char* fmt, ...) {
    va_list args;
    va_start(args, fmt);
    std::vsnprintf(g_last_error, sizeof g_last_error, fmt, args);
    va_end(args);
}

const char* bqq_last_error(void) { return g_last_error; }

BQQStatus bqq_check_pointer(const char* name, const void* ptr, size_t align) {
    if (ptr == nullptr) {
        bqq_set_error("%s is NULL", name);
        return BQQ_ERR_INVALID_ARGUMENT;
    }
    if (reinterpret_cast<uintptr_t>(ptr) % align != 0) {
        bqq_set_error("%s is not %zu-byte aligned", name, align);
        return BQQ_ERR_INVALID_ARGUMENT;
    }
    return BQQ_OK;
}

BQQStatus bqq_layout_check(const BQQLayout* layout) {
    if (layout == nullptr) {
        bqq_set_error("layout is NULL");
        return BQQ_ERR_INVALID_ARGUMENT;
    }
    bqq::FieldRange fields[6];
    bqq::field_ranges(*layout, fields);
    for (const bqq::FieldRange& f : fields) {
        if (f.value < 1 || f.value > f.hi) {
            bqq_set_error("layout field %s=%d outside [1, %d] (docs/FORMAT.md section 1)", f.name,
                          f.value, f.hi);
            return BQQ_ERR_INVALID_ARGUMENT;
        }
    }
    // The largest packed tensor, in 128-bit arithmetic: fields in range can still give
    // element counts past int64 (M = K = 2^31 - 1 with 1 x 1 blocks).
    using u128 = unsigned __int128;
    const u128 blocks = u128(layout->stacks) * u128(bqq::ceil_div(layout->M, layout->group_rows)) *
                        u128(bqq::ceil_div(layout->K, layout->group_cols));
    const u128 words = blocks * u128(layout->group_rows > layout->group_cols ? layout->group_rows
                                                                               : layout->group_cols) *
                       u128(bqq::ceil_div(layout->rank, bqq::kWordBits));
    if (words > u128(bqq::kMaxTensorElements) || blocks * 4 > u128(bqq::kMaxTensorElements)) {
        bqq_set_error("layout M=%d K=%d group %dx%d rank %d stacks %d: a packed tensor would hold "
                      "more than 2^59 elements (docs/FORMAT.md section 1)", layout->M, layout->K,
                      layout->group_rows, layout->group_cols, layout->rank, layout->stacks);
        return BQQ_ERR_INVALID_ARGUMENT;
    }
    return BQQ_OK;
}

int64_t bqq_y_bits_words(const BQQLayout* layout) {
    return bqq_layout_check(layout) == BQQ_OK ? bqq::Layout::from(*layout).y_words() : 0;
}

int64_t bqq_z_bits_words(const BQQLayout* layout) {
    return bqq_layout_check(layout) == BQQ_OK ? bqq::Layout::from(*layout).z_words() : 0;
}

int64_t bqq_scale_count(const BQQLayout* layout) {
    return bqq_layout_check(layout) == BQQ_OK ? bqq::Layout::from(*layout).scale_count() : 0;
}

}  // extern "C"
