// Static registration for libbqq_trt_plugin_autoreg.so: loading the library (ctypes.CDLL,
// dlopen, `trtexec --staticPlugins`) registers the BQQMatMul and BQQGather creators with
// TensorRT's global plugin registry, under their own namespace "bqq" (the macro
// REGISTER_TENSORRT_PLUGIN would pass ""). loadLibrary-style loading uses libbqq_trt_plugin.so
// instead (BQQPluginLibrary.cpp): never load both into one process.
#include <NvInferRuntime.h>

#include <string>

#include "BQQGatherPluginCreator.h"
#include "BQQMatMulPluginCreator.h"

namespace
{

// Registers one creator for the lifetime of the library and deregisters it on unload, so
// TensorRT is never left with a dangling creator (its registry outlives this object:
// libnvinfer was initialised before this library).
template <typename Creator>
class StaticRegistration
{
public:
    StaticRegistration() noexcept
    {
        std::string const label = std::string(mCreator.getPluginNamespace()) + "::" + mCreator.getPluginName();
        nvinfer1::IPluginRegistry* registry = getPluginRegistry();
        if (registry == nullptr)
        {
            bqq::trt::logMessage(nvinfer1::ILogger::Severity::kERROR,
                label + ": TensorRT's plugin registry is unavailable; the plugin is not registered");
            return;
        }
        mRegistered = registry->registerCreator(mCreator, mCreator.getPluginNamespace());
        if (!mRegistered)
        {
            bqq::trt::logMessage(nvinfer1::ILogger::Severity::kERROR,
                label
                    + ": could not register the plugin creator (already registered, e.g. by loading "
                      "libbqq_trt_plugin.so as well?)");
        }
    }

    ~StaticRegistration()
    {
        if (mRegistered)
        {
            getPluginRegistry()->deregisterCreator(mCreator);
        }
    }

    StaticRegistration(StaticRegistration const&) = delete;
    StaticRegistration& operator=(StaticRegistration const&) = delete;

private:
    Creator mCreator;
    bool mRegistered{false};
};

StaticRegistration<bqq::trt::BQQMatMulPluginCreator> const gMatMul;
StaticRegistration<bqq::trt::gather::BQQGatherPluginCreator> const gGather;

}  // namespace
