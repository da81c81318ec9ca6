// Minimal .npy reader/writer for the runtime's inputs and outputs (NumPy format versions
// 1.0, 2.0 and 3.0, little-endian or byte-sized dtypes, C order only). Every size is checked
// against the file before anything is read; a bad file raises NpyError naming the file and
// the problem.
#ifndef BQQ_NPY_H
#define BQQ_NPY_H

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace bqq {
namespace npy {

class NpyError : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

// dtypes this reader accepts, as NumPy descr strings: <f2 <f4 <f8 <i2 <i4 <i8 <u2 <u4 <u8
// |i1 |u1 |b1 ("|" or "<" are both accepted for 1-byte types).
struct Array {
    std::string descr;           // normalised, e.g. "<f4", "|i1"
    std::vector<int64_t> shape;  // empty for a 0-d array
    std::vector<unsigned char> data;

    size_t itemsize() const;
    int64_t count() const;  // product of shape (1 for 0-d)
    std::string shape_string() const;  // "(3, 4)"
};

// Bytes per element of a supported descr; throws NpyError for anything else.
size_t descr_itemsize(const std::string& descr);

// Parse a complete .npy image held in memory; name is used in error messages.
Array parse(const unsigned char* bytes, size_t size, const std::string& name);

// Read a .npy file; throws NpyError (bad content) naming path.
Array read(const std::string& path);

// Write a .npy file (version 1.0, or 2.0 when the header needs it) through a temporary
// file and rename, so a reader never sees half a file. Throws NpyError.
void write(const std::string& path, const Array& array);

}  // namespace npy
}  // namespace bqq

#endif  // BQQ_NPY_H
