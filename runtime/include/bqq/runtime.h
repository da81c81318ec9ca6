// bqq_runtime: run a serialised TensorRT engine that uses the BQQMatMul plugin.
//
//   bqq::Engine engine("model.engine", "libbqq_trt_plugin.so");
//   auto outputs = engine.run({{"input", bqq::npy::read("x.npy")}});
//   bqq::Timing t = engine.benchmark(inputs, /*warmup=*/10, /*iters=*/100);
//
// The plugin library is the one built for IPluginRegistry::loadLibrary (it exports
// getCreators / setLoggerFinder), i.e. libbqq_trt_plugin.so. I/O is bound by tensor name
// (setTensorAddress) and the engine runs with enqueueV3 on the engine's own CUDA stream.
#ifndef BQQ_RUNTIME_H
#define BQQ_RUNTIME_H

#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "bqq/npy.h"

namespace bqq {

class RuntimeError : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

struct TensorInfo {
    std::string name;
    bool is_input = false;
    std::string descr;           // .npy dtype of the tensor, e.g. "<f4"
    std::vector<int64_t> shape;  // -1 for a dynamic dim
};

struct Timing {
    std::vector<float> samples_ms;  // one per timed iteration (CUDA events around enqueueV3)
    float percentile(double q) const;  // q in [0, 100]
    float mean() const;
};

using HostTensors = std::map<std::string, npy::Array>;

class Engine {
public:
    // Loads the plugin library, then deserialises engine_path. Throws RuntimeError naming the
    // file and the reason (missing plugin, TensorRT error, plugin without this GPU's kernels).
    Engine(const std::string& engine_path, const std::string& plugin_path);
    ~Engine();
    Engine(const Engine&) = delete;
    Engine& operator=(const Engine&) = delete;

    const std::vector<TensorInfo>& tensors() const;

    // Copies inputs to the device, runs once, returns every output on the host.
    HostTensors run(const HostTensors& inputs);

    // Runs warmup untimed and iters timed executions on inputs already on the device.
    Timing benchmark(const HostTensors& inputs, int warmup, int iters);

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace bqq

#endif  // BQQ_RUNTIME_H
