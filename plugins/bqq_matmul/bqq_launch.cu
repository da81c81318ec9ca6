// bqq_matmul_cuda: the one entry point of the CUDA kernels (bqq_matmul_cuda.h). Validates the
// layout and pointers, checks that this library holds a usable image for the running GPU,
// then picks a kernel family:
//   rows <= kGemvMaxRows        bqq_gemv.cu   small batch, memory bound, fp32 workspace
//   fp16 and an sm_80+ image    bqq_tiled.cu  tensor-core (mma.sync) tiles
//   otherwise (fp32, sm_75/72)  bqq_tiled.cu  SIMT fp32 tiles
// No kernel is launched before every check has passed.
#include <algorithm>
#include <cstdio>
#include <mutex>
#include <type_traits>

#include "bqq_internal.h"
#include "bqq_kernels.cuh"
#include "bqq_matmul_cuda.h"

#ifndef BQQ_CUDA_ARCHS
#define BQQ_CUDA_ARCHS "unknown"
#endif

namespace {

constexpr int64_t kGemvMaxRows = 16;
constexpr int kMaxDevices = 64;

struct DeviceInfo {
    bool ready = false;
    BQQStatus status = BQQ_OK;
    char message[768] = "";
    int sm_count = 0;
    bool use_mma = false;
};

bool is_arch_error(cudaError_t err) {
    return err == cudaErrorNoKernelImageForDevice || err == cudaErrorInvalidDeviceFunction ||
           err == cudaErrorUnsupportedPtxVersion;
}

// Queried once per device: SM count, and which images the driver picked for our kernels.
// Returns a copy taken under the lock: an uncached (transient) failure may be rewritten by
// another thread while the caller reads it.
DeviceInfo device_info(int device) {
    static std::mutex mutex;
    static DeviceInfo infos[kMaxDevices];
    std::lock_guard<std::mutex> lock(mutex);
    DeviceInfo& info = infos[device];
    if (info.ready) return info;
    int major = 0, minor = 0;
    cudaDeviceProp prop{};
    cudaError_t err = cudaGetDeviceProperties(&prop, device);
    if (err == cudaSuccess) {
        major = prop.major;
        minor = prop.minor;
        info.sm_count = prop.multiProcessorCount;
    }
    cudaFuncAttributes attr{};
    if (err == cudaSuccess) err = bqq::finalize_attributes(&attr);
    if (is_arch_error(err)) {
        cudaGetLastError();  // this error is ours: do not leave it for the caller's next check
        info.status = BQQ_ERR_UNSUPPORTED_ARCH;
        std::snprintf(info.message, sizeof info.message,
                      "GPU %d (%s) has compute capability %d.%d, but this library holds kernels only "
                      "for CUDA architectures %s (%s); rebuild with -DCMAKE_CUDA_ARCHITECTURES=%d%d "
                      "using a CUDA toolkit that supports it",
                      device, prop.name, major, minor, BQQ_CUDA_ARCHS, cudaGetErrorString(err), major,
                      minor);
        info.ready = true;  // permanent for this device: the library does not change
        return info;
    }
    if (err != cudaSuccess) {
        info.status = BQQ_ERR_CUDA;
        std::snprintf(info.message, sizeof info.message, "querying GPU %d: %s", device,
                      cudaGetErrorString(err));
        return info;  // not cached: may be transient
    }
    // The mma kernel's body exists only in images built for sm_80+ (PTX version >= 80).
    if (major >= 8) {
        if (bqq::tiled_mma_attributes(&attr) == cudaSuccess) info.use_mma = attr.ptxVersion >= 80;
        else cudaGetLastError();  // no mma image: the SIMT path serves, clear our own error
    }
    info.status = BQQ_OK;
    info.ready = true;
    return info;
}

BQQStatus check_pointer(const char* name, const void* ptr, size_t align) {
    if (ptr == nullptr) {
        bqq_set_error("%s is NULL", name);
        return BQQ_ERR_INVALID_ARGUMENT;
    }
    if (reinterpret_cast<uintptr_t>(ptr) % align != 0) {
        bqq_set_error("%s is not %zu-byte aligned", name, align);
        return BQQ_ERR_INVALID_ARGUMENT;
    }
    return BQQ_OK;
}

BQQStatus launch_error(cudaError_t err, const char* what) {
    if (err == cudaSuccess) return BQQ_OK;
    if (is_arch_error(err)) {
        bqq_set_error("%s: %s (library built for CUDA architectures %s)", what, cudaGetErrorString(err),
                      BQQ_CUDA_ARCHS);
        return BQQ_ERR_UNSUPPORTED_ARCH;
    }
    bqq_set_error("%s: %s", what, cudaGetErrorString(err));
    return BQQ_ERR_CUDA;
}

template <typename T>
BQQStatus run(const bqq::Shape& sh, const bqq::Weights& w, int64_t rows, const void* x, const void* bias,
              void* out, void* workspace, const DeviceInfo& info, cudaStream_t stream) {
    const T* xt = static_cast<const T*>(x);
    const T* bt = static_cast<const T*>(bias);
    T* ot = static_cast<T*>(out);
    if (rows <= kGemvMaxRows) {
        float* acc = static_cast<float*>(workspace);
        BQQStatus st = launch_error(cudaMemsetAsync(acc, 0, size_t(rows) * sh.M * sizeof(float), stream),
                                    "cudaMemsetAsync(workspace)");
        if (st == BQQ_OK)
            st = launch_error(bqq::launch_gemv<T>(sh, w, int(rows), xt, acc, info.sm_count, stream),
                              "BQQ small-batch kernel launch");
        if (st == BQQ_OK)
            st = launch_error(bqq::launch_finalize<T>(sh, int(rows), acc, bt, ot, stream),
                              "BQQ finalize kernel launch");
        return st;
    }
    if constexpr (std::is_same<T, __half>::value) {
        if (info.use_mma)
            return launch_error(bqq::launch_tiled_mma(sh, w, rows, xt, bt, ot, stream),
                                "BQQ tensor-core kernel launch");
    }
    return launch_error(bqq::launch_tiled_simt<T>(sh, w, rows, xt, bt, ot, stream), "BQQ tiled kernel launch");
}

// Bytes the small-batch path accumulates into; the tiled path needs none.
size_t gemv_workspace(const BQQLayout* layout, int64_t rows) {
    return rows <= kGemvMaxRows ? size_t(rows) * size_t(layout->M) * sizeof(float) : 0;
}

}  // namespace

// Non-decreasing in rows (see the header), so callers size it once for their largest batch.
extern "C" size_t bqq_matmul_cuda_workspace(const BQQLayout* layout, int64_t rows, BQQDataType /*dtype*/) {
    if (bqq_layout_check(layout) != BQQ_OK || rows <= 0) return 0;
    return gemv_workspace(layout, std::min(rows, kGemvMaxRows));
}

extern "C" BQQStatus bqq_matmul_cuda(const BQQLayout* layout, int64_t rows, BQQDataType dtype,
                                     const void* x, const int32_t* y_bits, const int32_t* z_bits,
                                     const void* scales, const void* bias, void* out, void* workspace,
                                     size_t workspace_bytes, cudaStream_t stream) {
    if (bqq_layout_check(layout) != BQQ_OK) return BQQ_ERR_INVALID_ARGUMENT;
    if (dtype != BQQ_FLOAT32 && dtype != BQQ_FLOAT16) {
        bqq_set_error("dtype=%d is neither BQQ_FLOAT32 nor BQQ_FLOAT16", int(dtype));
        return BQQ_ERR_INVALID_ARGUMENT;
    }
    if (rows < 0) {
        bqq_set_error("rows=%lld is negative", static_cast<long long>(rows));
        return BQQ_ERR_INVALID_ARGUMENT;
    }
    if (rows == 0) return BQQ_OK;
    const size_t elem = dtype == BQQ_FLOAT32 ? 4 : 2;
    const struct {
        const char* name;
        const void* ptr;
        size_t align;
    } pointers[] = {{"x", x, elem}, {"y_bits", y_bits, 4}, {"z_bits", z_bits, 4}, {"scales", scales, 2},
                    {"out", out, elem}};
    for (const auto& p : pointers)
        if (check_pointer(p.name, p.ptr, p.align) != BQQ_OK) return BQQ_ERR_INVALID_ARGUMENT;
    if (bias != nullptr && check_pointer("bias", bias, elem) != BQQ_OK) return BQQ_ERR_INVALID_ARGUMENT;
    const size_t need = gemv_workspace(layout, rows);
    if (need > 0) {
        if (workspace_bytes < need || check_pointer("workspace", workspace, 4) != BQQ_OK) {
            bqq_set_error("workspace: %zu bytes at %p, need %zu bytes (4-byte aligned) for rows=%lld, M=%d; "
                          "ask bqq_matmul_cuda_workspace",
                          workspace_bytes, workspace, need, static_cast<long long>(rows), layout->M);
            return BQQ_ERR_INVALID_ARGUMENT;
        }
    }

    int device = 0;
    if (cudaError_t err = cudaGetDevice(&device); err != cudaSuccess) return launch_error(err, "cudaGetDevice");
    if (device < 0 || device >= kMaxDevices) {
        bqq_set_error("CUDA device %d: only devices 0..%d are supported", device, kMaxDevices - 1);
        return BQQ_ERR_INVALID_ARGUMENT;
    }
    const DeviceInfo info = device_info(device);
    if (info.status != BQQ_OK) {
        bqq_set_error("%s", info.message);
        return info.status;
    }

    bqq::Shape sh;
    sh.M = layout->M;
    sh.K = layout->K;
    sh.gr = layout->group_rows;
    sh.gc = layout->group_cols;
    sh.rank = layout->rank;
    sh.p = layout->stacks;
    sh.R = int((int64_t(sh.M) + sh.gr - 1) / sh.gr);
    sh.C = int((int64_t(sh.K) + sh.gc - 1) / sh.gc);
    sh.L = (sh.rank + 31) / 32;
    const bqq::Weights w{y_bits, z_bits, static_cast<const __half*>(scales)};
    if (dtype == BQQ_FLOAT16) return run<__half>(sh, w, rows, x, bias, out, workspace, info, stream);
    return run<float>(sh, w, rows, x, bias, out, workspace, info, stream);
}
