// Creator of the BQQMatMul plugin (IPluginCreatorV3One). createPlugin is the one place that
// validates the creation fields, for the ONNX parser (build) and for engine deserialisation
// (runtime) alike.
#ifndef BQQ_MATMUL_PLUGIN_CREATOR_H
#define BQQ_MATMUL_PLUGIN_CREATOR_H

#include <NvInferRuntime.h>

#include "BQQMatMulPlugin.h"

namespace bqq
{
namespace trt
{

class BQQMatMulPluginCreator final : public PluginCreatorBase<BQQMatMulPlugin>
{
public:
    // Returns nullptr, after logging which field is wrong, when a field is missing,
    // duplicated, not a single int32, or out of the range docs/FORMAT.md allows. The
    // runtime phase (engine deserialisation) also needs the serialise-only has_bias field.
    nvinfer1::IPluginV3* createPlugin(
        char const* name, nvinfer1::PluginFieldCollection const* fc, nvinfer1::TensorRTPhase phase) noexcept override;
};

}  // namespace trt
}  // namespace bqq

#endif  // BQQ_MATMUL_PLUGIN_CREATOR_H
