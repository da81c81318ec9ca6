// bqq_matmul_cuda and bqq_dequantize_cuda (bqq_matmul_cuda.h): validate the layout and
// pointers, check once per device that this library holds a usable image for the GPU, then
// pick a path:
//   rows >= dense threshold, fp16, cuBLASLt built in,
//     workspace given                                  bqq_dense.cu   decode to fp16 + cuBLASLt
//   rows <= 16, fp16, sm_80+ image, decode fits        bqq_decode.cu  tensor cores
//   rows <= 16 otherwise                               bqq_gemv.cu    SIMT (any GPU)
//   rows > 16, fp16, sm_80+ image                      bqq_tiled.cu   mma.sync tiles
//   rows > 16 otherwise (fp32, sm_75/72)               bqq_tiled.cu   SIMT tiles
// The portable switch forces the SIMT kernels (no dense path either). Every kernel path is
// one launch without scratch memory; the dense path is two (decode, GEMM) in the workspace.
// No kernel is launched before every check has passed.
#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <type_traits>

#include "bqq_internal.h"
#include "bqq_kernels.cuh"
#include "bqq_matmul_cuda.h"

#ifndef BQQ_CUDA_ARCHS
#define BQQ_CUDA_ARCHS "unknown"
#endif

namespace {

constexpr int64_t kSmallBatchRows = 16;
// From this many rows on, fp16 calls with a large enough workspace take the dense path.
// NOT YET MEASURED: an estimate (docs/KERNELS.md); `make gpu-check` (bench/kernel_bench.py)
// prints the measured crossover next to this value, which is the number to put here.
constexpr int64_t kDenseMinRows = 256;
constexpr int kMaxDevices = 64;

thread_local BQQKernelPath g_last_path = BQQ_PATH_NONE;

std::atomic<int64_t>& dense_min_rows() {
    static std::atomic<int64_t> rows{kDenseMinRows};
    return rows;
}

std::atomic<int>& portable_flag() {
    static std::atomic<int> flag{[] {
        const char* env = std::getenv("BQQ_CUDA_PORTABLE");
        return env != nullptr && std::strcmp(env, "1") == 0 ? 1 : 0;
    }()};
    return flag;
}

struct DeviceInfo {
    bool ready = false;
    BQQStatus status = BQQ_OK;
    char message[768] = "";
    int sm_count = 0;
    int max_smem = 0;  // opt-in dynamic shared memory per block
    bool tensor_cores = false;  // the driver picked sm_80+ images of the tensor-core kernels
};

bool is_arch_error(cudaError_t err) {
    return err == cudaErrorNoKernelImageForDevice || err == cudaErrorInvalidDeviceFunction ||
           err == cudaErrorUnsupportedPtxVersion;
}

// The advice for a GPU this library has no kernel for, written once: the plugin, the
// runtime and the Python binding pass this message on unchanged.
void describe_unsupported_arch(char* buf, size_t size, int device, const cudaDeviceProp& prop, cudaError_t err) {
    std::snprintf(buf, size,
                  "unsupported GPU architecture: GPU %d (%s) is sm_%d%d, but this library holds kernels only for "
                  "CUDA architectures %s (%s). Rebuild it for this GPU with a CUDA toolkit that supports sm_%d%d: "
                  "cmake -S <bqq-deploy> -B build -DCMAKE_CUDA_ARCHITECTURES=%d%d && cmake --build build "
                  "(docs/KERNELS.md)",
                  device, prop.name, prop.major, prop.minor, BQQ_CUDA_ARCHS, cudaGetErrorString(err), prop.major,
                  prop.minor, prop.major, prop.minor);
}

// Queried once per device. Returns a copy taken under the lock: an uncached (transient)
// failure may be rewritten by another thread while the caller reads it.
DeviceInfo device_info(int device) {
    static std::mutex mutex;
    static DeviceInfo infos[kMaxDevices];
    std::lock_guard<std::mutex> lock(mutex);
    DeviceInfo& info = infos[device];
    if (info.ready) return info;
    cudaDeviceProp prop{};
    cudaError_t err = cudaGetDeviceProperties(&prop, device);
    cudaFuncAttributes attr{};
    if (err == cudaSuccess) err = bqq::gemv_attributes(&attr);  // any image at all?
    if (is_arch_error(err)) {
        cudaGetLastError();  // this error is ours: do not leave it for the caller's next check
        info.status = BQQ_ERR_UNSUPPORTED_ARCH;
        describe_unsupported_arch(info.message, sizeof info.message, device, prop, err);
        info.ready = true;  // permanent for this device: the library does not change
        return info;
    }
    if (err == cudaSuccess) err = cudaDeviceGetAttribute(&info.max_smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
    if (err != cudaSuccess) {
        info.status = BQQ_ERR_CUDA;
        std::snprintf(info.message, sizeof info.message, "querying GPU %d: %s", device, cudaGetErrorString(err));
        return info;  // not cached: may be transient
    }
    info.sm_count = prop.multiProcessorCount;
    // The tensor-core kernels have bodies only in images built for sm_80+ (PTX version >= 80).
    if (prop.major >= 8) {
        cudaFuncAttributes mma{}, dec{};
        info.tensor_cores = bqq::tiled_mma_attributes(&mma) == cudaSuccess && mma.ptxVersion >= 80 &&
                            bqq::decode_attributes(&dec) == cudaSuccess && dec.ptxVersion >= 80 &&
                            bqq::decode_configure(info.max_smem) == cudaSuccess;
        cudaGetLastError();  // a failed query means no tensor-core image: the SIMT kernels serve
    }
    info.status = BQQ_OK;
    info.ready = true;
    return info;
}

}  // namespace

BQQStatus bqq::launch_status(cudaError_t err, const char* what) {
    if (err == cudaSuccess) return BQQ_OK;
    if (is_arch_error(err)) {  // the image check passed, so this is a kernel-specific gap
        bqq_set_error("unsupported GPU architecture: %s: %s (library built for CUDA architectures %s)", what,
                      cudaGetErrorString(err), BQQ_CUDA_ARCHS);
        return BQQ_ERR_UNSUPPORTED_ARCH;
    }
    bqq_set_error("%s: %s", what, cudaGetErrorString(err));
    return BQQ_ERR_CUDA;
}

namespace {

// The current device and its info, or an error: what every entry point checks after its
// arguments.
BQQStatus prepare(DeviceInfo* info) {
    int device = 0;
    if (cudaError_t err = cudaGetDevice(&device); err != cudaSuccess) return bqq::launch_status(err, "cudaGetDevice");
    if (device < 0 || device >= kMaxDevices) {
        bqq_set_error("CUDA device %d: only devices 0..%d are supported", device, kMaxDevices - 1);
        return BQQ_ERR_INVALID_ARGUMENT;
    }
    *info = device_info(device);
    if (info->status != BQQ_OK) bqq_set_error("%s", info->message);
    return info->status;
}

bool dense_wanted(int64_t rows, BQQDataType dtype) {
    return dtype == BQQ_FLOAT16 && bqq::dense_available() && portable_flag().load() == 0 &&
           rows >= dense_min_rows().load();
}

template <typename T>
BQQStatus run(const bqq::Layout& lay, const bqq::Weights& w, int64_t rows, const void* x, const void* bias,
              void* out, void* workspace, size_t workspace_bytes, const DeviceInfo& info, cudaStream_t stream) {
    const T* xt = static_cast<const T*>(x);
    const T* bt = static_cast<const T*>(bias);
    T* ot = static_cast<T*>(out);
    if constexpr (std::is_same<T, __half>::value) {
        if (dense_wanted(rows, BQQ_FLOAT16) && workspace != nullptr &&
            workspace_bytes >= bqq::dense_workspace(lay)) {
            bool ran = false;
            if (BQQStatus st = bqq::launch_dense(lay, w, rows, xt, bt, ot, workspace, stream, &ran); st != BQQ_OK)
                return st;
            if (ran) {
                g_last_path = BQQ_PATH_DENSE;
                return BQQ_OK;
            }
        }
    }
    const bool tensor_cores = info.tensor_cores && portable_flag().load() == 0;
    BQQKernelPath path;
    cudaError_t err;
    if (rows <= kSmallBatchRows) {
        size_t smem = 0;
        if constexpr (std::is_same<T, __half>::value)
            if (tensor_cores) smem = bqq::decode_smem_bytes(lay, info.sm_count, info.max_smem, w);
        if (smem > 0) {
            path = BQQ_PATH_DECODE_TC;
            if constexpr (std::is_same<T, __half>::value)
                err = bqq::launch_decode(lay, w, int(rows), xt, bt, ot, info.sm_count, smem, stream);
        } else {
            path = BQQ_PATH_GEMV_PORTABLE;
            err = bqq::launch_gemv<T>(lay, w, int(rows), xt, bt, ot, stream);
        }
    } else if (std::is_same<T, __half>::value && tensor_cores) {
        path = BQQ_PATH_TILED_MMA;
        if constexpr (std::is_same<T, __half>::value) err = bqq::launch_tiled_mma(lay, w, rows, xt, bt, ot, stream);
    } else {
        path = BQQ_PATH_TILED_PORTABLE;
        err = bqq::launch_tiled_simt<T>(lay, w, rows, xt, bt, ot, stream);
    }
    static const char* const names[] = {"", "BQQ tensor-core decode kernel launch", "BQQ small-batch kernel launch",
                                        "BQQ tensor-core tiled kernel launch", "BQQ tiled kernel launch"};
    const BQQStatus st = bqq::launch_status(err, names[path]);
    if (st == BQQ_OK) g_last_path = path;
    return st;
}

}  // namespace

BQQStatus bqq::device_ready() {
    DeviceInfo info;
    return prepare(&info);
}

extern "C" size_t bqq_matmul_cuda_workspace(const BQQLayout* layout, int64_t rows, BQQDataType dtype) {
    if (bqq_layout_check(layout) != BQQ_OK) return 0;
    return dense_wanted(rows, dtype) ? bqq::dense_workspace(bqq::Layout::from(*layout)) : 0;
}

extern "C" int64_t bqq_matmul_cuda_set_dense_min_rows(int64_t rows) {
    if (rows < 1) {
        bqq_set_error("dense_min_rows=%lld must be >= 1 (INT64_MAX: never)", static_cast<long long>(rows));
        return -1;
    }
    return dense_min_rows().exchange(rows);
}

extern "C" int64_t bqq_matmul_cuda_dense_min_rows(void) {
    return bqq::dense_available() ? dense_min_rows().load() : -1;
}

extern "C" int bqq_matmul_cuda_set_portable(int enable) { return portable_flag().exchange(enable ? 1 : 0); }

extern "C" BQQKernelPath bqq_matmul_cuda_last_path(void) { return g_last_path; }

extern "C" BQQStatus bqq_matmul_cuda(const BQQLayout* layout, int64_t rows, BQQDataType dtype,
                                     const void* x, const int32_t* y_bits, const int32_t* z_bits,
                                     const void* scales, const void* bias, void* out, void* workspace,
                                     size_t workspace_bytes, cudaStream_t stream) {
    g_last_path = BQQ_PATH_NONE;
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
        if (bqq_check_pointer(p.name, p.ptr, p.align) != BQQ_OK) return BQQ_ERR_INVALID_ARGUMENT;
    if (bias != nullptr && bqq_check_pointer("bias", bias, elem) != BQQ_OK) return BQQ_ERR_INVALID_ARGUMENT;

    DeviceInfo info;
    if (BQQStatus st = prepare(&info); st != BQQ_OK) return st;
    const bqq::Layout lay = bqq::Layout::from(*layout);
    const bqq::Weights w{y_bits, z_bits, static_cast<const __half*>(scales)};
    if (dtype == BQQ_FLOAT16) return run<__half>(lay, w, rows, x, bias, out, workspace, workspace_bytes, info, stream);
    return run<float>(lay, w, rows, x, bias, out, workspace, workspace_bytes, info, stream);
}

extern "C" BQQStatus bqq_dequantize_cuda(const BQQLayout* layout, const int32_t* y_bits, const int32_t* z_bits,
                                         const void* scales, void* out, cudaStream_t stream) {
    if (bqq_layout_check(layout) != BQQ_OK) return BQQ_ERR_INVALID_ARGUMENT;
    const struct {
        const char* name;
        const void* ptr;
        size_t align;
    } pointers[] = {{"y_bits", y_bits, 4}, {"z_bits", z_bits, 4}, {"scales", scales, 2}, {"out", out, 2}};
    for (const auto& p : pointers)
        if (bqq_check_pointer(p.name, p.ptr, p.align) != BQQ_OK) return BQQ_ERR_INVALID_ARGUMENT;
    DeviceInfo info;
    if (BQQStatus st = prepare(&info); st != BQQ_OK) return st;
    const bqq::Weights w{y_bits, z_bits, static_cast<const __half*>(scales)};
    const bqq::Layout lay = bqq::Layout::from(*layout);
    return bqq::launch_status(bqq::launch_rows<void, __half>(lay, w, nullptr, lay.M, static_cast<__half*>(out), nullptr,
                                                             stream),
                              "BQQ dequantize kernel launch");
}
