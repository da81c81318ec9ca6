// Layout validation, packed-tensor element counts and the thread-local error message of the
// C ABI (bqq_matmul.h). Compiled into both the CPU reference and the CUDA library.
#include <cstdarg>
#include <cstdio>

#include "bqq_internal.h"

namespace {

thread_local char g_last_error[1024] = "";

// docs/FORMAT.md section 1.
constexpr int32_t kMaxGroup = 4096;
constexpr int32_t kMaxRank = 4096;
constexpr int32_t kMaxStacks = 16;

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace

extern "C" {

void bqq_set_error(const char* fmt, ...) {
    va_list args;
    va_start(args, fmt);
    std::vsnprintf(g_last_error, sizeof g_last_error, fmt, args);
    va_end(args);
}

const char* bqq_last_error(void) { return g_last_error; }

BQQStatus bqq_layout_check(const BQQLayout* layout) {
    if (layout == nullptr) {
        bqq_set_error("layout is NULL");
        return BQQ_ERR_INVALID_ARGUMENT;
    }
    struct Field {
        const char* name;
        int32_t value;
        int32_t hi;
    };
    const Field fields[] = {
        {"M", layout->M, INT32_MAX},          {"K", layout->K, INT32_MAX},
        {"group_rows", layout->group_rows, kMaxGroup}, {"group_cols", layout->group_cols, kMaxGroup},
        {"rank", layout->rank, kMaxRank},    {"stacks", layout->stacks, kMaxStacks},
    };
    for (const Field& f : fields) {
        if (f.value < 1 || f.value > f.hi) {
            bqq_set_error("layout field %s=%d outside [1, %d] (docs/FORMAT.md section 1)", f.name,
                          f.value, f.hi);
            return BQQ_ERR_INVALID_ARGUMENT;
        }
    }
    return BQQ_OK;
}

static int64_t packed_words(const BQQLayout* layout, int32_t group) {
    if (bqq_layout_check(layout) != BQQ_OK) return 0;
    return int64_t{layout->stacks} * ceil_div(layout->M, layout->group_rows) *
           ceil_div(layout->K, layout->group_cols) * group * ceil_div(layout->rank, 32);
}

int64_t bqq_y_bits_words(const BQQLayout* layout) {
    return layout ? packed_words(layout, layout->group_rows) : 0;
}

int64_t bqq_z_bits_words(const BQQLayout* layout) {
    return layout ? packed_words(layout, layout->group_cols) : 0;
}

int64_t bqq_scale_count(const BQQLayout* layout) {
    if (bqq_layout_check(layout) != BQQ_OK) return 0;
    return int64_t{layout->stacks} * ceil_div(layout->M, layout->group_rows) *
           ceil_div(layout->K, layout->group_cols) * 4;
}

}  // extern "C"
