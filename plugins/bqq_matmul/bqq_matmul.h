// BQQMatMul: y = x W_hat^T + bias on the packed layout of docs/FORMAT.md (version 1).
// Plain C ABI shared by the CPU reference, the CUDA kernels, the TensorRT plugin and the
// Python ctypes binding. No CUDA types here: the CUDA entry points are in bqq_matmul_cuda.h.
#ifndef BQQ_MATMUL_H
#define BQQ_MATMUL_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define BQQ_FORMAT_VERSION 1

// Field names follow docs/FORMAT.md: W is [M, K], blocks are group_rows x group_cols,
// rank = l bits per packed row, stacks = p.
typedef struct BQQLayout {
    int32_t M;
    int32_t K;
    int32_t group_rows;
    int32_t group_cols;
    int32_t rank;
    int32_t stacks;
} BQQLayout;

typedef enum BQQStatus {
    BQQ_OK = 0,
    BQQ_ERR_INVALID_ARGUMENT = 1,  // a layout field, pointer or size is wrong
    BQQ_ERR_CUDA = 2,              // a CUDA call failed (message names it)
    BQQ_ERR_UNSUPPORTED_ARCH = 3,  // the library holds no kernel image for this GPU
} BQQStatus;

typedef enum BQQDataType {
    BQQ_FLOAT32 = 0,
    BQQ_FLOAT16 = 1,
} BQQDataType;

// Checks every field against docs/FORMAT.md section 1. On failure returns
// BQQ_ERR_INVALID_ARGUMENT and bqq_last_error() names the field.
BQQStatus bqq_layout_check(const BQQLayout* layout);

// Element counts of the packed tensors (docs/FORMAT.md section 2), 0 for an invalid layout.
int64_t bqq_y_bits_words(const BQQLayout* layout);
int64_t bqq_z_bits_words(const BQQLayout* layout);
int64_t bqq_scale_count(const BQQLayout* layout);

// CPU reference (the oracle for every other reader). x: [rows, K] fp32; y_bits, z_bits:
// int32 words; scales: fp16 bit patterns [p, R, C, 4]; bias: [M] fp32 or NULL;
// out: [rows, M] fp32. Accumulates in double.
BQQStatus bqq_matmul_reference(const BQQLayout* layout, int64_t rows, const float* x,
                               const int32_t* y_bits, const int32_t* z_bits,
                               const uint16_t* scales, const float* bias, float* out);

// Message of the last failed call on this thread ("" when none).
const char* bqq_last_error(void);

#ifdef __cplusplus
}
#endif

#endif  // BQQ_MATMUL_H
