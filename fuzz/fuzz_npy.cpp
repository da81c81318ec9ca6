// Fuzz harness: the C++ .npy reader (runtime/src/npy.cpp). The only acceptable outcome for
// bad input is bqq::npy::NpyError. For every input it also checks that
//   - parse() (in memory) and read() (from a file) agree: both reject, or both return the
//     same array;
//   - an accepted array is consistent: data holds count() * itemsize() bytes;
//   - write() of an accepted array reads back as the same array.
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "bqq/npy.h"
#include "fuzz_check.h"

namespace {

std::string g_path;  // one scratch file per process, rewritten by every case

bool same(const bqq::npy::Array& a, const bqq::npy::Array& b) {
    return a.descr == b.descr && a.shape == b.shape && a.data == b.data;
}

void write_bytes(const std::string& path, const uint8_t* data, size_t size) {
    FILE* f = std::fopen(path.c_str(), "wb");
    FUZZ_CHECK(f != nullptr, "cannot create %s", path.c_str());
    FUZZ_CHECK(std::fwrite(data, 1, size, f) == size, "short write to %s", path.c_str());
    std::fclose(f);
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    // Memory-backed /dev/shm where there is one: 10x faster than a disk for a file per case.
    const char* dir = std::getenv("TMPDIR");
    if (access("/dev/shm", W_OK) == 0) dir = "/dev/shm";
    g_path = std::string(dir && *dir ? dir : "/tmp") + "/bqq-fuzz-npy-" + std::to_string(getpid()) + ".npy";
    std::atexit([] { std::remove(g_path.c_str()); });
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    namespace npy = bqq::npy;
    if (g_path.empty()) LLVMFuzzerInitialize(nullptr, nullptr);
    bool parsed_ok = false, read_ok = false;
    npy::Array parsed, from_file;
    try {
        parsed = npy::parse(data, size, "fuzz");
        parsed_ok = true;
    } catch (const npy::NpyError&) {
    }
    write_bytes(g_path, data, size);
    try {
        from_file = npy::read(g_path);
        read_ok = true;
    } catch (const npy::NpyError&) {
    }
    FUZZ_CHECK(parsed_ok == read_ok, "parse() %s but read() %s the same bytes",
               parsed_ok ? "accepts" : "rejects", read_ok ? "accepts" : "rejects");
    if (!parsed_ok) return 0;
    FUZZ_CHECK(same(parsed, from_file), "parse() and read() return different arrays");
    FUZZ_CHECK(parsed.count() >= 0, "negative element count");
    FUZZ_CHECK(parsed.data.size() == static_cast<uint64_t>(parsed.count()) * parsed.itemsize(),
               "%zu data bytes for shape %s of %s", parsed.data.size(), parsed.shape_string().c_str(),
               parsed.descr.c_str());
    npy::write(g_path, parsed);
    FUZZ_CHECK(same(npy::read(g_path), parsed), "write() then read() changes the array");
    return 0;
}
