// Static registration for libbqq_trt_plugin_autoreg.so: loading the library (ctypes.CDLL,
// dlopen, `trtexec --staticPlugins`) registers the BQQMatMul creator with TensorRT's global
// plugin registry. The creator is registered under its own namespace "bqq" (the macro
// REGISTER_TENSORRT_PLUGIN would pass ""). loadLibrary-style loading uses
// libbqq_trt_plugin.so instead (BQQPluginLibrary.cpp): never load both into one process.
#include <NvInferRuntime.h>

#include "BQQMatMulPluginCreator.h"

namespace
{

class StaticRegistration
{
public:
    StaticRegistration() noexcept
    {
        nvinfer1::IPluginRegistry* registry = getPluginRegistry();
        if (registry == nullptr)
        {
            bqq::trt::logMessage(nvinfer1::ILogger::Severity::kERROR,
                "bqq::BQQMatMul: TensorRT's plugin registry is unavailable; the plugin is not registered");
            return;
        }
        mRegistered = registry->registerCreator(mCreator, bqq::trt::kPluginNamespace);
        if (!mRegistered)
        {
            bqq::trt::logMessage(nvinfer1::ILogger::Severity::kERROR,
                "bqq::BQQMatMul: could not register the plugin creator (already registered, e.g. by loading "
                "libbqq_trt_plugin.so as well?)");
        }
    }

    ~StaticRegistration()
    {
        // Unloading the library must not leave TensorRT a dangling creator. TensorRT's registry
        // outlives this object: libnvinfer was initialised before this library.
        if (mRegistered)
        {
            getPluginRegistry()->deregisterCreator(mCreator);
        }
    }

    StaticRegistration(StaticRegistration const&) = delete;
    StaticRegistration& operator=(StaticRegistration const&) = delete;

private:
    bqq::trt::BQQMatMulPluginCreator mCreator;
    bool mRegistered{false};
};

StaticRegistration const gRegistration;

}  // namespace
