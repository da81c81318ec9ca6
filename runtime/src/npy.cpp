// .npy reader/writer: see include/bqq/npy.h. Format reference: NumPy's
// "numpy.lib.format" description (magic, version, little-endian header length, a Python
// dict literal header with descr / fortran_order / shape, then the raw data).
#include "bqq/npy.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <limits>
#include <sstream>

#include <unistd.h>

namespace bqq {
namespace npy {
namespace {

const unsigned char kMagic[6] = {0x93, 'N', 'U', 'M', 'P', 'Y'};
// Far above any header NumPy writes for a real array; bounds the allocation for the header.
constexpr uint64_t kMaxHeaderBytes = 1u << 20;

[[noreturn]] void fail(const std::string& name, const std::string& problem) {
    throw NpyError(name + ": " + problem);
}

// Length of magic + version + length field + header for a file of file_size bytes whose
// first avail bytes are in buf. Checks magic, version and that the header fits the file.
size_t header_end(const unsigned char* buf, size_t avail, uint64_t file_size, const std::string& name) {
    if (avail < sizeof(kMagic) || std::memcmp(buf, kMagic, sizeof(kMagic)) != 0) {
        fail(name, "not a .npy file (bad magic string)");
    }
    if (avail < 10) fail(name, "truncated before the header length");
    const unsigned major = buf[6], minor = buf[7];
    if (major < 1 || major > 3 || minor != 0) {
        fail(name, "unsupported .npy format version " + std::to_string(major) + "." + std::to_string(minor));
    }
    uint64_t length = 0;
    size_t preamble = 0;
    if (major == 1) {
        length = uint64_t(buf[8]) | (uint64_t(buf[9]) << 8);
        preamble = 10;
    } else {
        if (avail < 12) fail(name, "truncated header length");
        length = uint64_t(buf[8]) | (uint64_t(buf[9]) << 8) | (uint64_t(buf[10]) << 16) | (uint64_t(buf[11]) << 24);
        preamble = 12;
    }
    if (length > kMaxHeaderBytes) fail(name, "header length " + std::to_string(length) + " is implausibly large");
    if (preamble + length > file_size) {
        fail(name, "header length " + std::to_string(length) + " runs past the end of the file (" +
                       std::to_string(file_size) + " bytes)");
    }
    return preamble + static_cast<size_t>(length);
}

// Tiny parser for the header's Python dict literal.
class HeaderParser {
public:
    HeaderParser(const char* text, size_t size, const std::string& name) : p_(text), end_(text + size), name_(name) {}

    void parse(std::string& descr, bool& fortran, std::vector<int64_t>& shape) {
        bool have_descr = false, have_fortran = false, have_shape = false;
        skip_ws();
        expect('{');
        for (;;) {
            skip_ws();
            if (peek() == '}') break;
            const std::string key = quoted();
            skip_ws();
            expect(':');
            skip_ws();
            if (key == "descr" && !have_descr) {
                descr = quoted();
                have_descr = true;
            } else if (key == "fortran_order" && !have_fortran) {
                fortran = boolean();
                have_fortran = true;
            } else if (key == "shape" && !have_shape) {
                shape = tuple();
                have_shape = true;
            } else {
                bad("unexpected or repeated key '" + key + "'");
            }
            skip_ws();
            if (peek() == ',') {
                ++p_;
                continue;
            }
            if (peek() != '}') bad("expected ',' or '}'");
        }
        ++p_;
        skip_ws();
        if (p_ != end_) bad("trailing characters after the header dict");
        if (!have_descr || !have_fortran || !have_shape) bad("needs the keys 'descr', 'fortran_order' and 'shape'");
    }

private:
    char peek() const { return p_ < end_ ? *p_ : '\0'; }
    void skip_ws() {
        while (p_ < end_ && (*p_ == ' ' || *p_ == '\n' || *p_ == '\t' || *p_ == '\r')) ++p_;
    }
    [[noreturn]] void bad(const std::string& what) const { fail(name_, "malformed header: " + what); }
    void expect(char c) {
        if (peek() != c) bad(std::string("expected '") + c + "'");
        ++p_;
    }
    std::string quoted() {
        const char q = peek();
        if (q != '\'' && q != '"') bad("expected a quoted string");
        const char* start = ++p_;
        while (p_ < end_ && *p_ != q) ++p_;
        if (p_ == end_) bad("unterminated string");
        return std::string(start, p_++);
    }
    bool boolean() {
        if (end_ - p_ >= 4 && std::memcmp(p_, "True", 4) == 0) return p_ += 4, true;
        if (end_ - p_ >= 5 && std::memcmp(p_, "False", 5) == 0) return p_ += 5, false;
        bad("fortran_order must be True or False");
    }
    std::vector<int64_t> tuple() {
        std::vector<int64_t> dims;
        expect('(');
        for (;;) {
            skip_ws();
            if (peek() == ')') break;
            if (peek() < '0' || peek() > '9') bad("shape entries must be non-negative integers");
            int64_t value = 0;
            while (peek() >= '0' && peek() <= '9') {
                if (value > (std::numeric_limits<int64_t>::max() - 9) / 10) bad("shape entry too large");
                value = value * 10 + (*p_++ - '0');
            }
            if (peek() == 'L') ++p_;  // Python 2 long suffix, written by old NumPy versions
            dims.push_back(value);
            skip_ws();
            if (peek() == ',') {
                ++p_;
            } else if (peek() != ')') {
                bad("expected ',' or ')' in shape");
            }
        }
        ++p_;
        return dims;
    }

    const char* p_;
    const char* end_;
    const std::string& name_;
};

std::string normalise_descr(std::string descr, const std::string& name) {
    if (descr.size() == 3 && descr[2] == '1' && (descr[0] == '<' || descr[0] == '|' || descr[0] == '=')) {
        descr[0] = '|';  // byte order is meaningless for 1-byte types
    }
    try {
        descr_itemsize(descr);
    } catch (const NpyError& e) {
        fail(name, e.what());
    }
    return descr;
}

struct Header {
    std::string descr;
    std::vector<int64_t> shape;
    size_t data_offset = 0;
    uint64_t data_bytes = 0;
};

// Validates everything that can be checked before the data is read: header syntax, dtype,
// order, and that the data size the shape implies equals what the file holds.
Header parse_header(const unsigned char* buf, size_t avail, uint64_t file_size, const std::string& name) {
    Header h;
    h.data_offset = header_end(buf, avail, file_size, name);
    if (avail < h.data_offset) fail(name, "internal error: header not fully read");
    const size_t preamble = buf[6] == 1 ? 10 : 12;
    bool fortran = false;
    HeaderParser(reinterpret_cast<const char*>(buf) + preamble, h.data_offset - preamble, name)
        .parse(h.descr, fortran, h.shape);
    h.descr = normalise_descr(h.descr, name);
    if (fortran) fail(name, "Fortran-order arrays are not supported (save with C order: np.ascontiguousarray)");
    // Every partial product must fit in int64 (Array::count multiplies in int64), zero dims
    // included: a zero must not hide an overflow of the other dims.
    uint64_t nonzero_product = 1;
    bool has_zero = false;
    constexpr uint64_t kMaxCount = static_cast<uint64_t>(std::numeric_limits<int64_t>::max());
    for (int64_t d : h.shape) {
        const uint64_t dim = static_cast<uint64_t>(d);
        if (dim == 0) {
            has_zero = true;
            continue;
        }
        if (nonzero_product > kMaxCount / dim) fail(name, "shape overflows");
        nonzero_product *= dim;
    }
    const uint64_t count = has_zero ? 0 : nonzero_product;
    const uint64_t itemsize = descr_itemsize(h.descr);
    if (count > std::numeric_limits<uint64_t>::max() / itemsize) fail(name, "shape overflows");
    h.data_bytes = count * itemsize;
    const uint64_t available = file_size - h.data_offset;
    if (available != h.data_bytes) {
        Array tmp;
        tmp.shape = h.shape;
        fail(name, "shape " + tmp.shape_string() + " of " + h.descr + " needs " + std::to_string(h.data_bytes) +
                       " data bytes, the file holds " + std::to_string(available) +
                       (available < h.data_bytes ? " (truncated)" : " (extra bytes)"));
    }
    return h;
}

}  // namespace

size_t descr_itemsize(const std::string& descr) {
    static const struct {
        const char* descr;
        size_t size;
    } kTypes[] = {{"<f2", 2}, {"<f4", 4}, {"<f8", 8}, {"<i2", 2}, {"<i4", 4}, {"<i8", 8},
                  {"<u2", 2}, {"<u4", 4}, {"<u8", 8}, {"|i1", 1}, {"|u1", 1}, {"|b1", 1}};
    for (const auto& t : kTypes) {
        if (descr == t.descr) return t.size;
    }
    throw NpyError("unsupported dtype '" + descr +
                   "' (supported: little-endian <f2 <f4 <f8 <i2 <i4 <i8 <u2 <u4 <u8, |i1 |u1 |b1)");
}

size_t Array::itemsize() const { return descr_itemsize(descr); }

int64_t Array::count() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
}

std::string Array::shape_string() const {
    std::ostringstream out;
    out << '(';
    for (size_t i = 0; i < shape.size(); ++i) out << (i ? ", " : "") << shape[i];
    if (shape.size() == 1) out << ',';
    out << ')';
    return out.str();
}

Array parse(const unsigned char* bytes, size_t size, const std::string& name) {
    const Header h = parse_header(bytes, size, size, name);
    Array a;
    a.descr = h.descr;
    a.shape = h.shape;
    a.data.assign(bytes + h.data_offset, bytes + h.data_offset + h.data_bytes);
    return a;
}

Array read(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) fail(path, "cannot open for reading");
    in.seekg(0, std::ios::end);
    const std::streamoff end = in.tellg();
    if (end < 0) fail(path, "cannot determine the file size");
    const uint64_t file_size = static_cast<uint64_t>(end);
    in.seekg(0);
    std::vector<unsigned char> head(static_cast<size_t>(std::min<uint64_t>(file_size, 12)));
    if (!in.read(reinterpret_cast<char*>(head.data()), static_cast<std::streamsize>(head.size()))) {
        fail(path, "read error");
    }
    const size_t header_bytes = header_end(head.data(), head.size(), file_size, path);
    head.resize(header_bytes);
    in.seekg(0);
    if (!in.read(reinterpret_cast<char*>(head.data()), static_cast<std::streamsize>(header_bytes))) {
        fail(path, "read error in the header");
    }
    const Header h = parse_header(head.data(), head.size(), file_size, path);
    Array a;
    a.descr = h.descr;
    a.shape = h.shape;
    a.data.resize(static_cast<size_t>(h.data_bytes));
    if (h.data_bytes && !in.read(reinterpret_cast<char*>(a.data.data()), static_cast<std::streamsize>(h.data_bytes))) {
        fail(path, "read error in the data");
    }
    return a;
}

void write(const std::string& path, const Array& array) {
    const size_t itemsize = descr_itemsize(array.descr);
    for (int64_t d : array.shape) {
        if (d < 0) fail(path, "negative dimension in shape " + array.shape_string());
    }
    if (static_cast<uint64_t>(array.count()) * itemsize != array.data.size()) {
        fail(path, "data holds " + std::to_string(array.data.size()) + " bytes, shape " + array.shape_string() +
                       " of " + array.descr + " needs " + std::to_string(array.count() * itemsize));
    }
    std::string header = "{'descr': '" + array.descr + "', 'fortran_order': False, 'shape': " + array.shape_string() + ", }";
    // Pad with spaces so the data starts on a 64-byte boundary; the header ends with '\n'.
    size_t preamble = 10;
    if (header.size() + 1 + 64 > 65535) preamble = 12;
    header.append((64 - (preamble + header.size() + 1) % 64) % 64, ' ');
    header.push_back('\n');
    std::string prefix(reinterpret_cast<const char*>(kMagic), sizeof(kMagic));
    prefix.push_back(static_cast<char>(preamble == 10 ? 1 : 2));
    prefix.push_back('\0');
    const uint64_t n = header.size();
    for (size_t i = 0; i < preamble - 8; ++i) prefix.push_back(static_cast<char>((n >> (8 * i)) & 0xff));

    const std::string tmp = path + ".tmp." + std::to_string(static_cast<long>(getpid()));
    {
        std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
        if (!out) fail(path, "cannot open " + tmp + " for writing");
        out.write(prefix.data(), static_cast<std::streamsize>(prefix.size()));
        out.write(header.data(), static_cast<std::streamsize>(header.size()));
        out.write(reinterpret_cast<const char*>(array.data.data()), static_cast<std::streamsize>(array.data.size()));
        out.flush();
        if (!out) {
            std::remove(tmp.c_str());
            fail(path, "write error");
        }
    }
    if (std::rename(tmp.c_str(), path.c_str()) != 0) {
        std::remove(tmp.c_str());
        fail(path, "cannot rename " + tmp + " into place");
    }
}

}  // namespace npy
}  // namespace bqq
