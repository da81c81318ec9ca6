// CPU reference of BQQGather (bqq_gather.h): the oracle of bqq_gather_cuda. Each entry is
// bqq::what_entry (bqq_layout.h), the fp32 evaluation the CUDA kernel uses too, rounded to
// the output type; tests/test_gather_cpu.py checks it against BQQWeight.dequantize().
#include <cmath>
#include <cstring>

#include "bqq_gather_internal.h"

namespace {

// float -> IEEE binary16 bit pattern, round to nearest even (as __float2half_rn): overflow
// to inf from 65520 on, subnormals below 2^-14, NaN stays NaN.
uint16_t float_to_half_bits(float f) {
    uint32_t x;
    std::memcpy(&x, &f, sizeof x);
    const uint16_t sign = uint16_t((x >> 16) & 0x8000u);
    const uint32_t mag = x & 0x7fffffffu;
    if (mag > 0x7f800000u) return sign | 0x7e00u;   // NaN
    if (mag >= 0x477ff000u) return sign | 0x7c00u;  // >= 65520 (or inf): inf
    if (mag < 0x38800000u) {                        // < 2^-14: multiples of 2^-24
        float v;
        std::memcpy(&v, &mag, sizeof v);
        return sign | uint16_t(std::nearbyint(v * 16777216.0f));  // exact scaling; rounding mode: nearest even
    }
    // Normal: drop 13 mantissa bits with round-to-nearest-even; a carry moves into the exponent.
    const uint32_t rounded = mag + 0xfffu + ((mag >> 13) & 1u);
    return sign | uint16_t((rounded - 0x38000000u) >> 13);
}

template <typename I, typename S>
void gather(const bqq::Layout& lay, int64_t count, const I* indices, const int32_t* y, const int32_t* z,
            const S* scales, BQQDataType dtype, void* out, int32_t* out_of_range) {
    for (int64_t n = 0; n < count; ++n) {
        const int64_t row = bqq::gather_row(int64_t(indices[n]), lay.M);
        if (row < 0 && out_of_range != nullptr) *out_of_range = 1;
        for (int64_t col = 0; col < lay.K; ++col) {
            const float v = row < 0 ? 0.f : bqq::what_entry(lay, y, z, scales, row, col);
            if (dtype == BQQ_FLOAT32) static_cast<float*>(out)[n * lay.K + col] = v;
            else static_cast<uint16_t*>(out)[n * lay.K + col] = float_to_half_bits(v);
        }
    }
}

template <typename I>
void gather_scales(const bqq::Layout& lay, int64_t count, const I* indices, const int32_t* y, const int32_t* z,
                   const void* scales, BQQDataType dtype, void* out, int32_t* out_of_range) {
    if (dtype == BQQ_FLOAT32)
        gather(lay, count, indices, y, z, static_cast<const float*>(scales), dtype, out, out_of_range);
    else
        gather(lay, count, indices, y, z, static_cast<const uint16_t*>(scales), dtype, out, out_of_range);
}

}  // namespace

extern "C" BQQStatus bqq_gather_reference(const BQQLayout* layout, int64_t count, BQQIndexType index_type,
                                          const void* indices, BQQDataType dtype, const int32_t* y_bits,
                                          const int32_t* z_bits, const void* scales, void* out,
                                          int32_t* out_of_range) {
    bool done = false;
    if (BQQStatus st = bqq::check_gather_args(layout, count, index_type, indices, dtype, y_bits, z_bits, scales, out,
                                              &done);
        st != BQQ_OK || done)
        return st;
    const bqq::Layout lay = bqq::Layout::from(*layout);
    if (index_type == BQQ_INDEX_INT32)
        gather_scales(lay, count, static_cast<const int32_t*>(indices), y_bits, z_bits, scales, dtype, out,
                      out_of_range);
    else
        gather_scales(lay, count, static_cast<const int64_t*>(indices), y_bits, z_bits, scales, dtype, out,
                      out_of_range);
    return BQQ_OK;
}
