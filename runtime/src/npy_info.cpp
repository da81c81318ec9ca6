// bqq-npy-info: print what bqq::npy reads from .npy files (dtype, shape, element sum), and
// optionally write the array back out with --copy. Exit 0 on success, 1 on a bad file, 2 on
// bad usage. Lets CI exercise the C++ reader on real and malformed files without a GPU.
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>

#include "bqq/npy.h"

namespace {

double half_to_double(uint16_t h) {
    const int exponent = (h >> 10) & 0x1f;
    const int mantissa = h & 0x3ff;
    double value;
    if (exponent == 0) {
        value = mantissa / 1024.0 / 16384.0;  // subnormal: m * 2^-24
    } else if (exponent == 31) {
        value = mantissa ? __builtin_nan("") : __builtin_inf();
    } else {
        value = (1.0 + mantissa / 1024.0) * static_cast<double>(1u << exponent) / 32768.0;  // 2^(e-15)
    }
    return (h & 0x8000) ? -value : value;
}

template <typename T>
double sum_as(const bqq::npy::Array& a) {
    double total = 0.0;
    const size_t n = a.data.size() / sizeof(T);
    for (size_t i = 0; i < n; ++i) {
        T v;
        std::memcpy(&v, a.data.data() + i * sizeof(T), sizeof(T));
        total += static_cast<double>(v);
    }
    return total;
}

double element_sum(const bqq::npy::Array& a) {
    const std::string& d = a.descr;
    if (d == "<f2") {
        double total = 0.0;
        for (size_t i = 0; i + 1 < a.data.size(); i += 2) total += half_to_double(uint16_t(a.data[i] | (a.data[i + 1] << 8)));
        return total;
    }
    if (d == "<f4") return sum_as<float>(a);
    if (d == "<f8") return sum_as<double>(a);
    if (d == "<i2") return sum_as<int16_t>(a);
    if (d == "<i4") return sum_as<int32_t>(a);
    if (d == "<i8") return sum_as<int64_t>(a);
    if (d == "<u2") return sum_as<uint16_t>(a);
    if (d == "<u4") return sum_as<uint32_t>(a);
    if (d == "<u8") return sum_as<uint64_t>(a);
    if (d == "|i1") return sum_as<int8_t>(a);
    return sum_as<uint8_t>(a);  // |u1, |b1
}

}  // namespace

int main(int argc, char** argv) {
    std::string input, copy_to;
    for (int i = 1; i < argc; ++i) {
        const std::string arg = argv[i];
        if (arg == "--copy" && i + 1 < argc) {
            copy_to = argv[++i];
        } else if (arg == "-h" || arg == "--help") {
            std::printf("usage: bqq-npy-info FILE.npy [--copy OUT.npy]\n");
            return 0;
        } else if (input.empty() && arg.rfind("--", 0) != 0) {
            input = arg;
        } else {
            std::fprintf(stderr, "bqq-npy-info: error: unexpected argument '%s'\n", arg.c_str());
            return 2;
        }
    }
    if (input.empty()) {
        std::fprintf(stderr, "usage: bqq-npy-info FILE.npy [--copy OUT.npy]\n");
        return 2;
    }
    try {
        const bqq::npy::Array a = bqq::npy::read(input);
        std::printf("%s: descr=%s shape=%s count=%lld bytes=%zu sum=%.17g\n", input.c_str(), a.descr.c_str(),
                    a.shape_string().c_str(), static_cast<long long>(a.count()), a.data.size(), element_sum(a));
        if (!copy_to.empty()) bqq::npy::write(copy_to, a);
    } catch (const bqq::npy::NpyError& e) {
        std::fprintf(stderr, "bqq-npy-info: error: %s\n", e.what());
        return 1;
    }
    return 0;
}
