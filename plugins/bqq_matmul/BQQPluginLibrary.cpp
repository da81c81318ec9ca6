// Entry points of libbqq_trt_plugin.so (both creators: BQQMatMul and BQQGather), the library
// for IPluginRegistry::loadLibrary, `trtexec --dynamicPlugins` and
// IBuilderConfig::setPluginsToSerialize / --setPluginsToSerialize.
// TensorRT registers what getCreators returns itself, so this library registers nothing on
// load (a second registration would make loadLibrary fail). The self-registering variant for
// ctypes.CDLL / `trtexec --staticPlugins` is BQQPluginStaticRegistration.cpp.
#include <NvInferRuntime.h>

#include "BQQGatherPluginCreator.h"
#include "BQQMatMulPluginCreator.h"

#define BQQ_TRT_EXPORT extern "C" __attribute__((visibility("default")))

BQQ_TRT_EXPORT void setLoggerFinder(nvinfer1::ILoggerFinder* finder)
{
    bqq::trt::setLoggerFinder(finder);
}

BQQ_TRT_EXPORT nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators)
{
    static bqq::trt::BQQMatMulPluginCreator matmul;
    static bqq::trt::gather::BQQGatherPluginCreator gather;
    static nvinfer1::IPluginCreatorInterface* const creators[] = {&matmul, &gather};
    nbCreators = static_cast<int32_t>(sizeof(creators) / sizeof(creators[0]));
    return creators;
}
