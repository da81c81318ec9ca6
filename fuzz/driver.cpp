// Seeded mutation driver for the LLVMFuzzerTestOneInput harnesses in this folder, for
// compilers without libFuzzer (gcc). It takes libFuzzer's flag syntax, so fuzz/run_long.py
// drives both engines the same way:
//
//   HARNESS [-runs=N] [-seed=S] [-max_len=L] [-timeout=SEC] [-dict=FILE]
//           [-artifact_prefix=DIR/] CORPUS_DIR_OR_FILE...
//
// Every seed runs once as is, then N mutated cases follow: 1-8 stacked mutations of a
// random seed (byte/bit edits, interesting integers, ASCII number rewrites, dictionary
// tokens, truncation, splices with another seed). No coverage feedback: the harnesses'
// structure-aware seeds and dictionaries carry the format knowledge. Same flags, same cases
// (a private PRNG, no implementation-defined std:: distributions).
//
// A crash (sanitizer report, abort, uncaught exception, signal) or a case running past
// -timeout writes the input to <artifact_prefix>crash-<hash> / timeout-<hash> and ends the
// process with a non-zero status, as libFuzzer does.
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <dirent.h>
#include <exception>
#include <fstream>
#include <iterator>
#include <string>
#include <sys/stat.h>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);
extern "C" __attribute__((weak)) int LLVMFuzzerInitialize(int* argc, char*** argv);
// Present when built with a sanitizer: called once a report is printed, before exit.
extern "C" __attribute__((weak)) void __sanitizer_set_death_callback(void (*callback)(void));

// gcc's UBSan runtime exits without calling the death callback; abort_on_error makes it
// raise SIGABRT instead, which on_signal turns into an artifact. Read by the runtime at start.
extern "C" const char* __ubsan_default_options() { return "abort_on_error=1:print_stacktrace=1"; }

namespace {

using Bytes = std::vector<uint8_t>;

// The case being run, for the crash handlers (set before each call).
const uint8_t* g_current = nullptr;
size_t g_current_size = 0;
std::string g_artifact_prefix;
volatile sig_atomic_t g_artifact_written = 0;

uint64_t fnv1a(const uint8_t* data, size_t size) {
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < size; ++i) h = (h ^ data[i]) * 1099511628211ull;
    return h;
}

// Async-signal-safe: open/write/close only, name built by hand.
void write_artifact(const char* kind) {
    if (g_artifact_written || g_current == nullptr) return;
    g_artifact_written = 1;
    char name[4096];
    size_t n = 0;
    for (char c : g_artifact_prefix) {
        if (n + 1 < sizeof name) name[n++] = c;
    }
    for (const char* p = kind; *p && n + 1 < sizeof name; ++p) name[n++] = *p;
    uint64_t h = fnv1a(g_current, g_current_size);
    for (int shift = 60; shift >= 0 && n + 1 < sizeof name; shift -= 4) name[n++] = "0123456789abcdef"[(h >> shift) & 15];
    name[n] = '\0';
    FILE* f = std::fopen(name, "wb");
    if (f) {
        std::fwrite(g_current, 1, g_current_size, f);
        std::fclose(f);
        std::fprintf(stderr, "bqq-fuzz-driver: wrote the failing input to %s\n", name);
    }
}

void on_sanitizer_death() { write_artifact("crash-"); }

void on_signal(int sig) {
    write_artifact("crash-");
    signal(sig, SIG_DFL);
    raise(sig);
}

void on_alarm(int) {
    static const char msg[] = "bqq-fuzz-driver: ALARM: a case ran past -timeout\n";
    ssize_t ignored = write(2, msg, sizeof msg - 1);
    (void)ignored;
    write_artifact("timeout-");
    _exit(70);  // libFuzzer's exit status for a timeout
}

void on_terminate() {
    std::fprintf(stderr, "bqq-fuzz-driver: uncaught exception escaped the harness\n");
    write_artifact("crash-");
    std::abort();
}

// splitmix64: small, fast, the same on every platform.
struct Rng {
    uint64_t state;
    uint64_t next() {
        uint64_t z = (state += 0x9e3779b97f4a7c15ull);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        return z ^ (z >> 31);
    }
    size_t below(size_t n) { return n ? static_cast<size_t>(next() % n) : 0; }
    bool chance(unsigned percent) { return below(100) < percent; }
};

bool read_file(const std::string& path, Bytes& out) {
    std::ifstream in(path, std::ios::binary);
    if (!in) return false;
    out.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    return true;
}

void add_corpus(const std::string& path, std::vector<Bytes>& seeds) {
    struct stat st {};
    if (stat(path.c_str(), &st) != 0) {
        std::fprintf(stderr, "bqq-fuzz-driver: no such corpus path %s\n", path.c_str());
        std::exit(2);
    }
    if (!S_ISDIR(st.st_mode)) {
        Bytes b;
        if (read_file(path, b)) seeds.push_back(std::move(b));
        return;
    }
    std::vector<std::string> names;
    if (DIR* dir = opendir(path.c_str())) {
        while (dirent* e = readdir(dir)) {
            if (e->d_name[0] != '.') names.push_back(e->d_name);
        }
        closedir(dir);
    }
    std::sort(names.begin(), names.end());  // directory order is not deterministic
    for (const std::string& name : names) {
        Bytes b;
        if (read_file(path + "/" + name, b)) seeds.push_back(std::move(b));
    }
}

// libFuzzer dictionary: one token per line, `"text"` or `name="text"`, \\ \" \xNN escapes.
std::vector<Bytes> read_dict(const std::string& path) {
    std::vector<Bytes> tokens;
    std::ifstream in(path);
    if (!in) {
        std::fprintf(stderr, "bqq-fuzz-driver: cannot read dictionary %s\n", path.c_str());
        std::exit(2);
    }
    std::string line;
    while (std::getline(in, line)) {
        const size_t open = line.find('"'), close = line.rfind('"');
        if (line.empty() || line[0] == '#' || open == std::string::npos || close <= open) continue;
        Bytes token;
        for (size_t i = open + 1; i < close; ++i) {
            if (line[i] == '\\' && i + 1 < close) {
                if (line[i + 1] == 'x' && i + 3 < close) {
                    token.push_back(static_cast<uint8_t>(std::stoi(line.substr(i + 2, 2), nullptr, 16)));
                    i += 3;
                } else {
                    token.push_back(static_cast<uint8_t>(line[++i]));
                }
            } else {
                token.push_back(static_cast<uint8_t>(line[i]));
            }
        }
        if (!token.empty()) tokens.push_back(std::move(token));
    }
    return tokens;
}

const uint64_t kInteresting[] = {0,          1,          2,          16,         17,         31,
                                 32,         33,         255,        256,        4096,       4097,
                                 0x7fff,     0x8000,     0xffff,     0x10000,    0x7fffffff, 0x80000000,
                                 0xffffffff, 0x100000000ull, 0x7fffffffffffffffull, 0x8000000000000000ull,
                                 0xffffffffffffffffull};
const char* const kNumbers[] = {"0", "1", "2", "3", "-1", "31", "32", "33", "4096", "4097", "65535", "65536",
                                "2147483647", "2147483648", "4294967295", "4294967296",
                                "9223372036854775807", "9223372036854775808", "18446744073709551615",
                                "18446744073709551616", "99999999999999999999999999"};

void mutate(Bytes& b, Rng& rng, const std::vector<Bytes>& seeds, const std::vector<Bytes>& dict) {
    switch (rng.below(dict.empty() ? 11 : 12)) {
    case 0:  // flip one bit
        if (!b.empty()) b[rng.below(b.size())] ^= static_cast<uint8_t>(1u << rng.below(8));
        break;
    case 1:  // random byte
        if (!b.empty()) b[rng.below(b.size())] = static_cast<uint8_t>(rng.next());
        break;
    case 2: {  // a byte that means something to text parsers
        static const char kChars[] = "\0\x01\x7f\x80\xff 0123456789(),:'\"{}[]xL-\n\\";
        if (!b.empty()) b[rng.below(b.size())] = static_cast<uint8_t>(kChars[rng.below(sizeof kChars - 1)]);
        break;
    }
    case 3: {  // insert random bytes
        const size_t n = 1 + rng.below(8), at = rng.below(b.size() + 1);
        Bytes ins(n);
        for (auto& x : ins) x = static_cast<uint8_t>(rng.next());
        b.insert(b.begin() + at, ins.begin(), ins.end());
        break;
    }
    case 4:  // erase a range
        if (!b.empty()) {
            const size_t at = rng.below(b.size()), n = 1 + rng.below(std::min<size_t>(b.size() - at, 16));
            b.erase(b.begin() + at, b.begin() + at + n);
        }
        break;
    case 5:  // copy a range over another place
        if (b.size() > 1) {
            const size_t from = rng.below(b.size()), to = rng.below(b.size());
            const size_t n = 1 + rng.below(std::min(b.size() - from, b.size() - to));
            Bytes chunk(b.begin() + from, b.begin() + from + n);
            std::copy(chunk.begin(), chunk.end(), b.begin() + to);
        }
        break;
    case 6: {  // an interesting little-endian integer of 1, 2, 4 or 8 bytes
        const size_t width = size_t{1} << rng.below(4);
        if (b.size() >= width) {
            uint64_t v = kInteresting[rng.below(std::size(kInteresting))];
            if (rng.chance(30)) v = ~v + 1;  // negated
            if (rng.chance(20)) v = rng.next();
            const size_t at = rng.below(b.size() - width + 1);
            for (size_t i = 0; i < width; ++i) b[at + i] = static_cast<uint8_t>(v >> (8 * i));
        }
        break;
    }
    case 7: {  // rewrite an ASCII number (shapes, lengths in text headers)
        std::vector<size_t> starts;
        for (size_t i = 0; i < b.size(); ++i) {
            if (b[i] >= '0' && b[i] <= '9' && (i == 0 || b[i - 1] < '0' || b[i - 1] > '9')) starts.push_back(i);
        }
        if (starts.empty()) break;
        const size_t at = starts[rng.below(starts.size())];
        size_t end = at;
        while (end < b.size() && b[end] >= '0' && b[end] <= '9') ++end;
        std::string num = kNumbers[rng.below(std::size(kNumbers))];
        if (rng.chance(30)) num = std::to_string(rng.next() >> rng.below(64));
        b.erase(b.begin() + at, b.begin() + end);
        b.insert(b.begin() + at, num.begin(), num.end());
        break;
    }
    case 8:  // truncate
        if (!b.empty()) b.resize(rng.below(b.size()));
        break;
    case 9: {  // splice: a range of another seed
        const Bytes& other = seeds[rng.below(seeds.size())];
        if (other.empty()) break;
        const size_t from = rng.below(other.size()), n = 1 + rng.below(other.size() - from);
        const size_t at = rng.below(b.size() + 1);
        if (rng.chance(50)) {
            b.insert(b.begin() + at, other.begin() + from, other.begin() + from + n);
        } else {
            b.resize(std::max(b.size(), at + n));
            std::copy(other.begin() + from, other.begin() + from + n, b.begin() + at);
        }
        break;
    }
    case 10: {  // append a run of one byte (long headers, long numbers)
        const size_t n = 1 + rng.below(rng.chance(10) ? 4096 : 32);
        b.insert(b.end(), n, static_cast<uint8_t>(rng.chance(50) ? '9' : rng.next()));
        break;
    }
    default: {  // dictionary token, inserted or overwriting
        const Bytes& token = dict[rng.below(dict.size())];
        const size_t at = rng.below(b.size() + 1);
        if (rng.chance(50)) {
            b.insert(b.begin() + at, token.begin(), token.end());
        } else {
            b.resize(std::max(b.size(), at + token.size()));
            std::copy(token.begin(), token.end(), b.begin() + at);
        }
        break;
    }
    }
}

void run_one(const Bytes& input, unsigned timeout) {
    // A heap copy of exactly input.size() bytes: ASan catches a read one past the end.
    uint8_t* copy = new uint8_t[input.size() ? input.size() : 1];
    if (!input.empty()) std::memcpy(copy, input.data(), input.size());
    g_current = copy;
    g_current_size = input.size();
    if (timeout) alarm(timeout);
    LLVMFuzzerTestOneInput(copy, input.size());
    if (timeout) alarm(0);
    g_current = nullptr;
    delete[] copy;
}

long long flag_value(const char* arg, const char* name, bool& matched) {
    const size_t n = std::strlen(name);
    matched = std::strncmp(arg, name, n) == 0 && arg[n] == '=';
    return matched ? std::atoll(arg + n + 1) : 0;
}

}  // namespace

int main(int argc, char** argv) {
    long long runs = 1000, seed = 0, max_len = 4096, timeout = 10;
    std::string dict_path;
    std::vector<std::string> corpus;
    for (int i = 1; i < argc; ++i) {
        bool m = false;
        const char* a = argv[i];
        if (long long v = flag_value(a, "-runs", m); m) runs = v;
        else if (long long v2 = flag_value(a, "-seed", m); m) seed = v2;
        else if (long long v3 = flag_value(a, "-max_len", m); m) max_len = v3;
        else if (long long v4 = flag_value(a, "-timeout", m); m) timeout = v4;
        else if (std::strncmp(a, "-dict=", 6) == 0) dict_path = a + 6;
        else if (std::strncmp(a, "-artifact_prefix=", 17) == 0) g_artifact_prefix = a + 17;
        else if (a[0] == '-') std::fprintf(stderr, "bqq-fuzz-driver: ignoring flag %s\n", a);
        else corpus.push_back(a);
    }
    if (LLVMFuzzerInitialize) LLVMFuzzerInitialize(&argc, &argv);
    std::set_terminate(on_terminate);
    signal(SIGABRT, on_signal);
    if (__sanitizer_set_death_callback) {
        __sanitizer_set_death_callback(on_sanitizer_death);  // ASan reports, SEGV included
    } else {
        for (int sig : {SIGSEGV, SIGBUS, SIGFPE, SIGILL}) signal(sig, on_signal);
    }
    signal(SIGALRM, on_alarm);

    std::vector<Bytes> seeds;
    for (const std::string& path : corpus) add_corpus(path, seeds);
    if (seeds.empty()) seeds.emplace_back();  // start from the empty input
    const std::vector<Bytes> dict = dict_path.empty() ? std::vector<Bytes>{} : read_dict(dict_path);

    const auto start = std::chrono::steady_clock::now();
    Rng rng{static_cast<uint64_t>(seed)};
    for (const Bytes& s : seeds) run_one(s, static_cast<unsigned>(timeout));
    for (long long i = 0; i < runs; ++i) {
        Bytes input = seeds[rng.below(seeds.size())];
        for (size_t n = 1 + rng.below(8); n > 0; --n) mutate(input, rng, seeds, dict);
        if (max_len > 0 && input.size() > static_cast<size_t>(max_len)) input.resize(static_cast<size_t>(max_len));
        run_one(input, static_cast<unsigned>(timeout));
    }
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    // The same summary line as libFuzzer ("Done N runs in T second(s)"), seeds included.
    std::fprintf(stderr, "Done %lld runs in %.0f second(s) (%zu seeds + %lld mutations, seed %lld, 0 crashes)\n",
                 static_cast<long long>(seeds.size()) + runs, seconds, seeds.size(), runs, seed);
    return 0;
}
