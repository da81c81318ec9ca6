// Invariant checks inside the fuzz harnesses: a broken invariant is a crash (abort), which
// libFuzzer and fuzz/driver.cpp both report and save the input for.
#ifndef BQQ_FUZZ_CHECK_H
#define BQQ_FUZZ_CHECK_H

#include <cstdio>
#include <cstdlib>

#define FUZZ_CHECK(cond, ...)                                                          \
    do {                                                                               \
        if (!(cond)) {                                                                 \
            std::fprintf(stderr, "FUZZ_CHECK failed at %s:%d: %s: ", __FILE__, __LINE__, #cond); \
            std::fprintf(stderr, __VA_ARGS__);                                         \
            std::fprintf(stderr, "\n");                                                \
            std::abort();                                                              \
        }                                                                              \
    } while (0)

#endif  // BQQ_FUZZ_CHECK_H
