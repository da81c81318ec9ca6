// What the CPU reference and the CUDA entry point of BQQGather share: the argument check
// (one set of messages; the index rule, bqq::gather_row, is in bqq_layout.h). Internal, not
// part of the ABI.
#ifndef BQQ_GATHER_INTERNAL_H
#define BQQ_GATHER_INTERNAL_H

#include "bqq_gather.h"
#include "bqq_internal.h"
#include "bqq_layout.h"

namespace bqq {

inline size_t dtype_size(BQQDataType dtype) { return dtype == BQQ_FLOAT32 ? 4 : 2; }

// Everything but the device: layout, count, types, and each pointer non-NULL and aligned to
// its element. `done` is set when count == 0 (nothing to do, pointers not looked at).
inline BQQStatus check_gather_args(const BQQLayout* layout, int64_t count, BQQIndexType index_type,
                                   const void* indices, BQQDataType dtype, const int32_t* y_bits,
                                   const int32_t* z_bits, const void* scales, const void* out, bool* done) {
    *done = false;
    if (bqq_layout_check(layout) != BQQ_OK) return BQQ_ERR_INVALID_ARGUMENT;
    if (count < 0) {
        bqq_set_error("count=%lld is negative", static_cast<long long>(count));
        return BQQ_ERR_INVALID_ARGUMENT;
    }
    if (index_type != BQQ_INDEX_INT32 && index_type != BQQ_INDEX_INT64) {
        bqq_set_error("index_type=%d is neither BQQ_INDEX_INT32 nor BQQ_INDEX_INT64", int(index_type));
        return BQQ_ERR_INVALID_ARGUMENT;
    }
    if (dtype != BQQ_FLOAT32 && dtype != BQQ_FLOAT16) {
        bqq_set_error("dtype=%d is neither BQQ_FLOAT32 nor BQQ_FLOAT16", int(dtype));
        return BQQ_ERR_INVALID_ARGUMENT;
    }
    if (count == 0) {
        *done = true;
        return BQQ_OK;
    }
    const size_t elem = dtype_size(dtype);
    const struct {
        const char* name;
        const void* ptr;
        size_t align;
    } pointers[] = {{"indices", indices, index_type == BQQ_INDEX_INT64 ? 8u : 4u},
                    {"y_bits", y_bits, 4},
                    {"z_bits", z_bits, 4},
                    {"scales", scales, elem},
                    {"out", out, elem}};
    for (const auto& p : pointers)
        if (bqq_check_pointer(p.name, p.ptr, p.align) != BQQ_OK) return BQQ_ERR_INVALID_ARGUMENT;
    return BQQ_OK;
}

}  // namespace bqq

#endif  // BQQ_GATHER_INTERNAL_H
