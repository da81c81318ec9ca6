// Entry points of libbqq_trt_plugin.so (both creators: BQQMatMul and BQQGather), the library
// for IPluginRegistry::loadLibrary, `trtexec --dynamicPlugins` and
// IBuilderConfig::setPluginsToSerialize / --setPluginsToSerialize.
// TensorRT registers what getCreators returns itself, so this library registers nothing on
// load (a second registration would make loadLibrary fail). The self-registering variant for
// ctypes.CDLL / `trtexec --staticPlugins` is BQQPluginStaticRegistration.cpp.
#include <NvInferRuntime.h>

#include "BQQMatMulPluginCreator.h"

// 1 unless the build has no ../bqq_gather (plugins/bqq_matmul/CMakeLists.txt).
#ifndef BQQ_WITH_GATHER
#define BQQ_WITH_GATHER 1
#endif
#if BQQ_WITH_GATHER
#include "BQQGatherPluginCreator.h"
#endif

#define BQQ_TRT_EXPORT extern "C" __attribute__((visibility("default")))

BQQ_TRT_EXPORT void setLoggerFinder(nvinfer1::ILoggerFinder* finder)
{
    bqq::trt::setLoggerFinder(finder);
}

BQQ_TRT_EXPORT nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators)
{
    static bqq::trt::BQQMatMulPluginCreator matmul;
#if BQQ_WITH_GATHER
    static bqq::trt::gather::BQQGatherPluginCreator gather;
    static nvinfer1::IPluginCreatorInterface* const creators[] = {&matmul, &gather};
#else
    static nvinfer1::IPluginCreatorInterface* const creators[] = {&matmul};
#endif
    nbCreators = static_cast<int32_t>(sizeof(creators) / sizeof(creators[0]));
    return creators;
}
