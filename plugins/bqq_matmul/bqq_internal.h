// Internal helpers shared by the CPU reference and the CUDA launcher (not part of the ABI).
#ifndef BQQ_INTERNAL_H
#define BQQ_INTERNAL_H

#include "bqq_matmul.h"

#ifdef __cplusplus
extern "C" {
#endif

// Sets the thread-local message that bqq_last_error() returns (printf format).
void bqq_set_error(const char* fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 1, 2)))
#endif
    ;

#ifdef __cplusplus
}
#endif

#endif  // BQQ_INTERNAL_H
