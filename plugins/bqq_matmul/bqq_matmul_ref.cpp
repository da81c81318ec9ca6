// CPU reference of BQQMatMul (docs/FORMAT.md section 3): the oracle every other reader is
// tested against. Factored forward, never builds W_hat, accumulates in double.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "bqq_internal.h"
#include "bqq_layout.h"

extern "C" BQQStatus bqq_matmul_reference(const BQQLayout* layout, int64_t rows, const float* x,
                                          const int32_t* y_bits, const int32_t* z_bits,
                                          const uint16_t* scales, const float* bias, float* out) {
    if (bqq_layout_check(layout) != BQQ_OK) return BQQ_ERR_INVALID_ARGUMENT;
    if (rows < 0) {
        bqq_set_error("rows=%lld is negative", static_cast<long long>(rows));
        return BQQ_ERR_INVALID_ARGUMENT;
    }
    if (rows == 0) return BQQ_OK;
    const struct {
        const char* name;
        const void* ptr;
    } required[] = {{"x", x}, {"y_bits", y_bits}, {"z_bits", z_bits}, {"scales", scales}, {"out", out}};
    for (const auto& r : required) {
        if (r.ptr == nullptr) {
            bqq_set_error("%s is NULL", r.name);
            return BQQ_ERR_INVALID_ARGUMENT;
        }
    }
    const bqq::Layout lay = bqq::Layout::from(*layout);
    const int64_t M = lay.M, K = lay.K, gr = lay.gr, gc = lay.gc, l = lay.rank, L = lay.L;

    std::vector<double> acc(static_cast<size_t>(int64_t(lay.R) * gr));
    std::vector<double> t(static_cast<size_t>(l));
    std::vector<double> xj(static_cast<size_t>(gc));
    for (int64_t n = 0; n < rows; ++n) {
        const float* xn = x + n * K;
        std::fill(acc.begin(), acc.end(), 0.0);
        for (int64_t j = 0; j < lay.C; ++j) {
            double s = 0.0;  // sum(x_j); columns past K are the zero padding
            for (int64_t c = 0; c < gc; ++c) {
                const int64_t col = j * gc + c;
                xj[c] = col < K ? xn[col] : 0.0;
                s += xj[c];
            }
            for (int64_t k = 0; k < lay.p; ++k) {
                for (int64_t i = 0; i < lay.R; ++i) {
                    const int64_t blk = lay.block(k, i, j);
                    const uint16_t* sc = scales + lay.scales(blk);
                    const double a = bqq::scale_value(sc[0]), b = bqq::scale_value(sc[1]);
                    const double cs = bqq::scale_value(sc[2]), d = bqq::scale_value(sc[3]);
                    // t = x_j Z^T: walk the set bits of every column's row of Z^T.
                    std::fill(t.begin(), t.end(), 0.0);
                    for (int64_t c = 0; c < gc; ++c) {
                        const int32_t* z = z_bits + lay.z_col(blk, c);
                        for (int64_t w = 0; w < L; ++w) {
                            uint32_t bits = static_cast<uint32_t>(z[w]) & lay.rank_mask(w);
                            for (; bits; bits &= bits - 1) t[32 * w + __builtin_ctz(bits)] += xj[c];
                        }
                    }
                    double sum_t = 0.0;
                    for (double v : t) sum_t += v;
                    const double block_term = cs * sum_t + d * s;
                    for (int64_t r = 0; r < gr; ++r) {
                        const int32_t* y = y_bits + lay.y_row(blk, r);
                        double dot = 0.0;
                        int pop = 0;
                        for (int64_t w = 0; w < L; ++w) {
                            uint32_t bits = static_cast<uint32_t>(y[w]) & lay.rank_mask(w);
                            pop += bqq::popcount(bits);
                            for (; bits; bits &= bits - 1) dot += t[32 * w + __builtin_ctz(bits)];
                        }
                        acc[i * gr + r] += a * dot + b * s * pop + block_term;
                    }
                }
            }
        }
        for (int64_t m = 0; m < M; ++m) {
            out[n * M + m] = static_cast<float>(acc[m] + (bias ? bias[m] : 0.0f));
        }
    }
    return BQQ_OK;
}
