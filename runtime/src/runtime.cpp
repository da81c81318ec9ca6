// bqq_runtime: see include/bqq/runtime.h.
#include "bqq/runtime.h"

#include <dlfcn.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <mutex>
#include <numeric>
#include <sstream>

#include <NvInferRuntime.h>
#include <cuda_runtime_api.h>

namespace bqq {
namespace {

class Logger : public nvinfer1::ILogger {
public:
    void log(Severity severity, const char* msg) noexcept override {
        if (severity > Severity::kWARNING) return;
        std::fprintf(stderr, "[TensorRT] %s\n", msg);
        if (severity <= Severity::kERROR) {
            std::lock_guard<std::mutex> lock(mutex_);
            errors_ += errors_.empty() ? msg : std::string("; ") + msg;
        }
    }
    std::string take_errors() {
        std::lock_guard<std::mutex> lock(mutex_);
        std::string out;
        out.swap(errors_);
        return out.empty() ? std::string("no message from TensorRT") : out;
    }

private:
    std::mutex mutex_;
    std::string errors_;
};

void check_cuda(cudaError_t status, const std::string& what) {
    if (status != cudaSuccess) throw RuntimeError(what + ": " + cudaGetErrorString(status));
}

std::string descr_of(nvinfer1::DataType type) {
    switch (type) {
        case nvinfer1::DataType::kFLOAT: return "<f4";
        case nvinfer1::DataType::kHALF: return "<f2";
        case nvinfer1::DataType::kINT8: return "|i1";
        case nvinfer1::DataType::kINT32: return "<i4";
        case nvinfer1::DataType::kINT64: return "<i8";
        case nvinfer1::DataType::kUINT8: return "|u1";
        case nvinfer1::DataType::kBOOL: return "|b1";
        default: return "";  // bf16, fp8, int4...: no .npy equivalent
    }
}

struct DeviceBuffer {
    void* ptr = nullptr;
    size_t bytes = 0;
    DeviceBuffer() = default;
    DeviceBuffer(const DeviceBuffer&) = delete;
    DeviceBuffer& operator=(const DeviceBuffer&) = delete;
    ~DeviceBuffer() {
        if (ptr) cudaFree(ptr);
    }
    void ensure(size_t n, const std::string& name) {
        n = std::max<size_t>(n, 1);
        if (n <= bytes) return;
        if (ptr) cudaFree(ptr);
        ptr = nullptr;
        bytes = 0;
        check_cuda(cudaMalloc(&ptr, n), "cudaMalloc for tensor " + name);
        bytes = n;
    }
};

std::string join_names(const std::vector<TensorInfo>& tensors, bool inputs) {
    std::string out;
    for (const auto& t : tensors) {
        if (t.is_input == inputs) out += (out.empty() ? "" : ", ") + t.name;
    }
    return out;
}

}  // namespace

float Timing::percentile(double q) const {
    if (samples_ms.empty()) return 0.0f;
    std::vector<float> sorted(samples_ms);
    std::sort(sorted.begin(), sorted.end());
    const double pos = std::clamp(q, 0.0, 100.0) / 100.0 * double(sorted.size() - 1);
    const size_t lo = static_cast<size_t>(pos);
    const size_t hi = std::min(lo + 1, sorted.size() - 1);
    return static_cast<float>(sorted[lo] + (pos - double(lo)) * (sorted[hi] - sorted[lo]));
}

float Timing::mean() const {
    if (samples_ms.empty()) return 0.0f;
    return std::accumulate(samples_ms.begin(), samples_ms.end(), 0.0f) / float(samples_ms.size());
}

struct Engine::Impl {
    // Declaration order = reverse destruction order: TensorRT objects go before the plugin
    // library they call into is released.
    Logger logger;
    void* plugin_dl = nullptr;
    std::unique_ptr<nvinfer1::IRuntime> runtime;
    std::unique_ptr<nvinfer1::ICudaEngine> engine;
    std::unique_ptr<nvinfer1::IExecutionContext> context;
    cudaStream_t stream = nullptr;
    std::vector<TensorInfo> tensors;
    std::map<std::string, DeviceBuffer> buffers;
    std::map<std::string, std::vector<int64_t>> output_shapes;

    ~Impl() {
        context.reset();
        engine.reset();
        runtime.reset();
        if (stream) cudaStreamDestroy(stream);
        if (plugin_dl) dlclose(plugin_dl);
    }

    void load_plugin(const std::string& path) {
        if (!std::ifstream(path).good()) throw RuntimeError("plugin library " + path + " does not exist or is unreadable");
        // dlopen first: its error says why a library does not load (missing libcudart, wrong
        // architecture), which IPluginRegistry::loadLibrary does not.
        plugin_dl = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
        if (!plugin_dl) throw RuntimeError("cannot load plugin library " + path + ": " + dlerror());
        if (!dlsym(plugin_dl, "getCreators")) {
            throw RuntimeError(path + " does not export getCreators: pass libbqq_trt_plugin.so (the library made "
                                      "for IPluginRegistry::loadLibrary), not the _autoreg variant");
        }
        if (!runtime->getPluginRegistry().loadLibrary(path.c_str())) {
            throw RuntimeError("TensorRT could not load plugin library " + path + ": " + logger.take_errors());
        }
    }

    void bind(const HostTensors& inputs) {
        for (const auto& t : tensors) {
            if (!t.is_input) continue;
            const auto it = inputs.find(t.name);
            if (it == inputs.end()) {
                throw RuntimeError("missing input '" + t.name + "' (engine inputs: " + join_names(tensors, true) + ")");
            }
            const npy::Array& a = it->second;
            if (a.descr != t.descr) throw RuntimeError("input '" + t.name + "' is " + a.descr + ", the engine expects " + t.descr);
            if (a.shape.size() != t.shape.size() || a.shape.size() > size_t(nvinfer1::Dims::MAX_DIMS)) {
                throw RuntimeError("input '" + t.name + "' has rank " + std::to_string(a.shape.size()) +
                                   ", the engine expects rank " + std::to_string(t.shape.size()));
            }
            nvinfer1::Dims dims{};
            dims.nbDims = static_cast<int32_t>(a.shape.size());
            for (size_t i = 0; i < a.shape.size(); ++i) dims.d[i] = a.shape[i];
            if (!context->setInputShape(t.name.c_str(), dims)) {
                throw RuntimeError("input '" + t.name + "' shape " + a.shape_string() +
                                   " is outside the engine's optimisation profile: " + logger.take_errors());
            }
            DeviceBuffer& buf = buffers[t.name];
            buf.ensure(a.data.size(), t.name);
            check_cuda(cudaMemcpyAsync(buf.ptr, a.data.data(), a.data.size(), cudaMemcpyHostToDevice, stream),
                       "copying input " + t.name);
            context->setTensorAddress(t.name.c_str(), buf.ptr);
        }
        for (const auto& t : tensors) {
            if (t.is_input) continue;
            const nvinfer1::Dims dims = context->getTensorShape(t.name.c_str());
            std::vector<int64_t> shape(dims.d, dims.d + std::max(dims.nbDims, 0));
            int64_t count = 1;
            for (int64_t d : shape) {
                if (d < 0) throw RuntimeError("output '" + t.name + "' has a data-dependent shape; not supported");
                count *= d;
            }
            DeviceBuffer& buf = buffers[t.name];
            buf.ensure(size_t(count) * npy::descr_itemsize(t.descr), t.name);
            context->setTensorAddress(t.name.c_str(), buf.ptr);
            output_shapes[t.name] = shape;
        }
    }

    void enqueue() {
        if (!context->enqueueV3(stream)) throw RuntimeError("enqueueV3 failed: " + logger.take_errors());
    }

    void synchronize(const std::string& what) {
        check_cuda(cudaStreamSynchronize(stream), what);
    }
};

Engine::Engine(const std::string& engine_path, const std::string& plugin_path) : impl_(new Impl) {
    Impl& m = *impl_;
    m.runtime.reset(nvinfer1::createInferRuntime(m.logger));
    if (!m.runtime) throw RuntimeError("createInferRuntime failed: " + m.logger.take_errors());
    m.load_plugin(plugin_path);

    std::ifstream in(engine_path, std::ios::binary);
    if (!in) throw RuntimeError("cannot open engine file " + engine_path);
    const std::vector<char> plan((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (plan.empty()) throw RuntimeError("engine file " + engine_path + " is empty");
    m.engine.reset(m.runtime->deserializeCudaEngine(plan.data(), plan.size()));
    if (!m.engine) {
        throw RuntimeError("cannot deserialise " + engine_path + ": " + m.logger.take_errors() +
                           " (an engine only loads on the TensorRT version and GPU it was built with; rebuild "
                           "it on this device with bqq-build or trtexec)");
    }
    m.context.reset(m.engine->createExecutionContext());
    if (!m.context) throw RuntimeError("createExecutionContext failed: " + m.logger.take_errors());
    check_cuda(cudaStreamCreateWithFlags(&m.stream, cudaStreamNonBlocking), "cudaStreamCreate");

    for (int32_t i = 0; i < m.engine->getNbIOTensors(); ++i) {
        TensorInfo t;
        t.name = m.engine->getIOTensorName(i);
        t.is_input = m.engine->getTensorIOMode(t.name.c_str()) == nvinfer1::TensorIOMode::kINPUT;
        t.descr = descr_of(m.engine->getTensorDataType(t.name.c_str()));
        if (t.descr.empty()) throw RuntimeError("tensor '" + t.name + "' has a data type with no .npy equivalent");
        const nvinfer1::Dims dims = m.engine->getTensorShape(t.name.c_str());
        t.shape.assign(dims.d, dims.d + std::max(dims.nbDims, 0));
        m.tensors.push_back(t);
    }
}

Engine::~Engine() = default;

const std::vector<TensorInfo>& Engine::tensors() const { return impl_->tensors; }

HostTensors Engine::run(const HostTensors& inputs) {
    Impl& m = *impl_;
    m.bind(inputs);
    m.enqueue();
    HostTensors outputs;
    for (const auto& t : m.tensors) {
        if (t.is_input) continue;
        npy::Array a;
        a.descr = t.descr;
        a.shape = m.output_shapes[t.name];
        a.data.resize(size_t(a.count()) * npy::descr_itemsize(a.descr));
        if (!a.data.empty()) {
            check_cuda(cudaMemcpyAsync(a.data.data(), m.buffers[t.name].ptr, a.data.size(), cudaMemcpyDeviceToHost, m.stream),
                       "copying output " + t.name);
        }
        outputs.emplace(t.name, std::move(a));
    }
    m.synchronize("running the engine");
    return outputs;
}

Timing Engine::benchmark(const HostTensors& inputs, int warmup, int iters) {
    Impl& m = *impl_;
    m.bind(inputs);
    for (int i = 0; i < warmup; ++i) m.enqueue();
    m.synchronize("warm-up");
    cudaEvent_t start = nullptr, stop = nullptr;
    check_cuda(cudaEventCreate(&start), "cudaEventCreate");
    check_cuda(cudaEventCreate(&stop), "cudaEventCreate");
    Timing timing;
    try {
        for (int i = 0; i < iters; ++i) {
            check_cuda(cudaEventRecord(start, m.stream), "cudaEventRecord");
            m.enqueue();
            check_cuda(cudaEventRecord(stop, m.stream), "cudaEventRecord");
            check_cuda(cudaEventSynchronize(stop), "timed run");
            float ms = 0.0f;
            check_cuda(cudaEventElapsedTime(&ms, start, stop), "cudaEventElapsedTime");
            timing.samples_ms.push_back(ms);
        }
    } catch (...) {
        cudaEventDestroy(start);
        cudaEventDestroy(stop);
        throw;
    }
    cudaEventDestroy(start);
    cudaEventDestroy(stop);
    return timing;
}

}  // namespace bqq
