// Internal helpers shared by the CPU reference and the CUDA launcher (not part of the ABI).
#ifndef BQQ_INTERNAL_H
#define BQQ_INTERNAL_H

#include <stddef.h>

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

// BQQ_OK when ptr is non-NULL and a multiple of align; else sets "NAME is NULL" or
// "NAME is not N-byte aligned" and returns BQQ_ERR_INVALID_ARGUMENT.
BQQStatus bqq_check_pointer(const char* name, const void* ptr, size_t align);

#ifdef __cplusplus
}
#endif

#endif  // BQQ_INTERNAL_H
