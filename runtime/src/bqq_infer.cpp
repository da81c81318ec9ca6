// bqq-infer: run a BQQ TensorRT engine on .npy inputs, write the outputs as .npy and print
// latency percentiles.
//
//   bqq-infer --engine model.engine --plugin libbqq_trt_plugin.so
//             --input input=x.npy [--input ...] [--output-dir out] [--iters 100] [--warmup 10]
//
// Exit codes: 0 ok, 1 runtime failure (TensorRT, CUDA, plugin), 2 bad usage or bad input file.
#include <cstdio>
#include <cstdlib>
#include <string>

#include "bqq/npy.h"
#include "bqq/runtime.h"

namespace {

const char kUsage[] =
    "usage: bqq-infer --engine FILE --plugin LIB --input NAME=FILE.npy [--input ...]\n"
    "                 [--output-dir DIR] [--iters N] [--warmup N]\n";

int usage_error(const std::string& message) {
    std::fprintf(stderr, "bqq-infer: error: %s\n%s", message.c_str(), kUsage);
    return 2;
}

bool parse_count(const std::string& text, int& value) {
    char* end = nullptr;
    const long parsed = std::strtol(text.c_str(), &end, 10);
    if (text.empty() || *end != '\0' || parsed < 0 || parsed > 1000000) return false;
    value = static_cast<int>(parsed);
    return true;
}

// Output tensor names may contain '/' or ':' (ONNX names); keep file names flat.
std::string file_name_for(const std::string& tensor) {
    std::string out = tensor;
    for (char& c : out) {
        if (c == '/' || c == '\\' || c == ':' || c == ' ') c = '_';
    }
    return out + ".npy";
}

}  // namespace

int main(int argc, char** argv) {
    std::string engine_path, plugin_path, output_dir;
    int iters = 100, warmup = 10;
    bqq::HostTensors inputs;
    try {
        for (int i = 1; i < argc; ++i) {
            const std::string arg = argv[i];
            if (arg == "-h" || arg == "--help") {
                std::printf("%s", kUsage);
                return 0;
            }
            if (i + 1 >= argc) return usage_error("missing value after " + arg);
            const std::string value = argv[++i];
            if (arg == "--engine") {
                engine_path = value;
            } else if (arg == "--plugin") {
                plugin_path = value;
            } else if (arg == "--output-dir") {
                output_dir = value;
            } else if (arg == "--iters") {
                if (!parse_count(value, iters)) return usage_error("--iters needs a count, got '" + value + "'");
            } else if (arg == "--warmup") {
                if (!parse_count(value, warmup)) return usage_error("--warmup needs a count, got '" + value + "'");
            } else if (arg == "--input") {
                const size_t eq = value.find('=');
                if (eq == std::string::npos || eq == 0) return usage_error("--input needs NAME=FILE.npy, got '" + value + "'");
                inputs[value.substr(0, eq)] = bqq::npy::read(value.substr(eq + 1));
            } else {
                return usage_error("unknown argument " + arg);
            }
        }
    } catch (const bqq::npy::NpyError& e) {
        return usage_error(e.what());
    }
    if (engine_path.empty() || plugin_path.empty()) return usage_error("--engine and --plugin are required");
    if (inputs.empty()) return usage_error("give at least one --input NAME=FILE.npy");

    try {
        bqq::Engine engine(engine_path, plugin_path);
        const bqq::HostTensors outputs = engine.run(inputs);
        for (const auto& [name, array] : outputs) {
            std::printf("output %s: %s %s\n", name.c_str(), array.descr.c_str(), array.shape_string().c_str());
            if (!output_dir.empty()) bqq::npy::write(output_dir + "/" + file_name_for(name), array);
        }
        if (iters > 0) {
            const bqq::Timing t = engine.benchmark(inputs, warmup, iters);
            std::printf("latency over %d iterations (CUDA events): p50 %.4f ms  p90 %.4f ms  p99 %.4f ms  mean %.4f ms\n",
                        iters, t.percentile(50), t.percentile(90), t.percentile(99), t.mean());
        }
    } catch (const std::exception& e) {
        std::fprintf(stderr, "bqq-infer: error: %s\n", e.what());
        return 1;
    }
    return 0;
}
