// Large batches as decode-to-fp16 + dense GEMM (the "dense path" of bqq_matmul_cuda): W_hat
// [M, K] fp16 is written once per call into the caller's workspace by the W_hat row kernel
// (../bqq_gather/bqq_gather.cu, all rows), then cuBLASLt computes out[rows, M] =
// x[rows, K] W_hat^T (+ bias through its BIAS epilogue), fp16 in and out, fp32 accumulation.
// Above a few hundred rows the GEMM dominates and runs at cuBLAS speed, which the tiled
// kernels (bqq_tiled.cu, one W_hat rebuild per 128 rows) cannot reach; the row threshold is
// bqq_launch.cu's kDenseMinRows, measured by bench/kernel_bench.py.
//
// Why cuBLASLt, linked into the kernel library (and so into the TensorRT plugin): the switch
// depends on the row count of each call, which only enqueue sees; a plugin cannot call
// TensorRT's own GEMM, and a graph-level "decode plugin + MatMul layer" would decode W_hat on
// every call, decode steps included. cuBLASLt (not cuBLAS) takes its workspace from the
// caller (TensorRT's per-enqueue workspace; no hidden allocation, safe in CUDA graphs) and
// is the smaller library (libcublas itself depends on it); JetPack ships it with CUDA.
// Built only when CMake finds cuBLASLt (BQQ_HAVE_CUBLASLT); otherwise dense_available() is
// false and every row count uses the kernels.
//
// Workspace: W_hat (2*M*K bytes, 256-byte aligned) + kLtWorkspace for cuBLASLt + 256 bytes
// of alignment slack. Traffic per call: 2*M*K bytes written and read once more by the GEMM,
// on top of what cuBLAS fp16 moves for a dense weight.
#include <mutex>

#include "bqq_internal.h"
#include "bqq_kernels.cuh"

#if BQQ_HAVE_CUBLASLT
#include <cublasLt.h>
#endif

namespace bqq {

#if BQQ_HAVE_CUBLASLT

namespace {

constexpr size_t kAlign = 256;
constexpr size_t kLtWorkspace = size_t(32) << 20;  // NVIDIA's advice for Hopper; the heuristic stays within it
constexpr int kMaxDevices = 64;

size_t what_bytes(const Layout& lay) { return (size_t(lay.M) * size_t(lay.K) * 2 + kAlign - 1) / kAlign * kAlign; }

// Largest power of two <= 256 dividing the address: the alignment cuBLASLt may assume.
uint32_t alignment_of(const void* p) {
    uint32_t a = uint32_t(kAlign);
    while (a > 2 && reinterpret_cast<uintptr_t>(p) % a != 0) a /= 2;
    return a;
}

BQQStatus lt_status(cublasStatus_t st, const char* what) {
    if (st == CUBLAS_STATUS_SUCCESS) return BQQ_OK;
    bqq_set_error("%s: %s (%s)", what, cublasLtGetStatusName(st), cublasLtGetStatusString(st));
    return BQQ_ERR_CUDA;
}

// One cuBLASLt handle per device, created on first use and kept for the process.
BQQStatus lt_handle(cublasLtHandle_t* handle) {
    static std::mutex mutex;
    static cublasLtHandle_t handles[kMaxDevices] = {};
    int device = 0;
    if (cudaError_t err = cudaGetDevice(&device); err != cudaSuccess) return launch_status(err, "cudaGetDevice");
    if (device < 0 || device >= kMaxDevices) {
        bqq_set_error("CUDA device %d: only devices 0..%d are supported", device, kMaxDevices - 1);
        return BQQ_ERR_INVALID_ARGUMENT;
    }
    std::lock_guard<std::mutex> lock(mutex);
    if (handles[device] == nullptr)
        if (BQQStatus st = lt_status(cublasLtCreate(&handles[device]), "cublasLtCreate"); st != BQQ_OK) return st;
    *handle = handles[device];
    return BQQ_OK;
}

}  // namespace

bool dense_available() { return true; }

size_t dense_workspace(const Layout& lay) { return what_bytes(lay) + kLtWorkspace + kAlign; }

BQQStatus launch_dense(const Layout& lay, const Weights& w, int64_t rows, const __half* x, const __half* bias,
                       __half* out, void* workspace, cudaStream_t stream, bool* ran) {
    *ran = false;
    // The bias epilogue has no alignment preference to declare: take it aligned or not at all.
    if (bias != nullptr && alignment_of(bias) < 16) return BQQ_OK;
    cublasLtHandle_t handle = nullptr;
    if (BQQStatus st = lt_handle(&handle); st != BQQ_OK) return st;
    unsigned char* base = static_cast<unsigned char*>(workspace);
    base += (kAlign - reinterpret_cast<uintptr_t>(base) % kAlign) % kAlign;
    __half* w_hat = reinterpret_cast<__half*>(base);
    void* lt_workspace = base + what_bytes(lay);

    // Column-major view: D [M, rows] = op(A) B with A = W_hat stored [K, M] (ld K), op = T;
    // B = x stored [K, rows] (ld K); D = out [M, rows] (ld M), i.e. row-major out[rows, M].
    cublasLtMatmulDescOpaque_t op_storage;
    cublasLtMatrixLayoutOpaque_t a_storage, b_storage, d_storage;
    cublasLtMatmulPreferenceOpaque_t pref_storage;
    cublasLtMatmulDesc_t op = &op_storage;
    cublasLtMatrixLayout_t a_desc = &a_storage, b_desc = &b_storage, d_desc = &d_storage;
    cublasLtMatmulPreference_t pref = &pref_storage;
    const cublasOperation_t transpose = CUBLAS_OP_T;
    const cublasLtEpilogue_t epilogue = bias != nullptr ? CUBLASLT_EPILOGUE_BIAS : CUBLASLT_EPILOGUE_DEFAULT;
    const uint64_t lt_bytes = kLtWorkspace;
    const uint32_t align_a = uint32_t(kAlign), align_b = alignment_of(x), align_d = alignment_of(out);
    const struct {
        cublasStatus_t status;
        const char* what;
    } setup[] = {
        {cublasLtMatmulDescInit(op, CUBLAS_COMPUTE_32F, CUDA_R_32F), "cublasLtMatmulDescInit"},
        {cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &transpose, sizeof transpose), "TRANSA"},
        {cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof epilogue), "EPILOGUE"},
        {cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias), "BIAS_POINTER"},
        {cublasLtMatrixLayoutInit(a_desc, CUDA_R_16F, uint64_t(lay.K), uint64_t(lay.M), int64_t(lay.K)), "layout A"},
        {cublasLtMatrixLayoutInit(b_desc, CUDA_R_16F, uint64_t(lay.K), uint64_t(rows), int64_t(lay.K)), "layout B"},
        {cublasLtMatrixLayoutInit(d_desc, CUDA_R_16F, uint64_t(lay.M), uint64_t(rows), int64_t(lay.M)), "layout D"},
        {cublasLtMatmulPreferenceInit(pref), "cublasLtMatmulPreferenceInit"},
        {cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &lt_bytes, sizeof lt_bytes),
         "MAX_WORKSPACE_BYTES"},
        {cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &align_a, sizeof align_a),
         "MIN_ALIGNMENT_A"},
        {cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &align_b, sizeof align_b),
         "MIN_ALIGNMENT_B"},
        {cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &align_d, sizeof align_d),
         "MIN_ALIGNMENT_C"},
        {cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &align_d, sizeof align_d),
         "MIN_ALIGNMENT_D"},
    };
    for (const auto& s : setup)
        if (BQQStatus st = lt_status(s.status, s.what); st != BQQ_OK) return st;

    // Ask before decoding: without an algorithm for these shapes and alignments the caller
    // falls back to the kernels and nothing was enqueued.
    cublasLtMatmulHeuristicResult_t heuristic{};
    int found = 0;
    const cublasStatus_t hs =
        cublasLtMatmulAlgoGetHeuristic(handle, op, a_desc, b_desc, d_desc, d_desc, pref, 1, &heuristic, &found);
    if (hs == CUBLAS_STATUS_NOT_SUPPORTED || (hs == CUBLAS_STATUS_SUCCESS && found == 0)) return BQQ_OK;
    if (BQQStatus st = lt_status(hs, "cublasLtMatmulAlgoGetHeuristic"); st != BQQ_OK) return st;

    if (BQQStatus st = launch_status(launch_rows<void, __half>(lay, w, nullptr, lay.M, w_hat, nullptr, stream),
                                     "BQQ dequantize kernel launch (dense path)");
        st != BQQ_OK)
        return st;
    const float alpha = 1.f, beta = 0.f;
    if (BQQStatus st = lt_status(cublasLtMatmul(handle, op, &alpha, w_hat, a_desc, x, b_desc, &beta, out, d_desc, out,
                                                d_desc, &heuristic.algo, lt_workspace, kLtWorkspace, stream),
                                 "cublasLtMatmul");
        st != BQQ_OK)
        return st;
    *ran = true;
    return BQQ_OK;
}

#else  // built without cuBLASLt: no dense path

bool dense_available() { return false; }

size_t dense_workspace(const Layout&) { return 0; }

BQQStatus launch_dense(const Layout&, const Weights&, int64_t, const __half*, const __half*, __half*, void*,
                       cudaStream_t, bool* ran) {
    *ran = false;
    return BQQ_OK;
}

#endif

}  // namespace bqq
