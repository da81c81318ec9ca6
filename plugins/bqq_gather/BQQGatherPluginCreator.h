// Creator of the BQQGather plugin (IPluginCreatorV3One). createPlugin validates the creation
// fields (parseFields, BQQPluginCommon.h), for the ONNX parser (build) and for engine
// deserialisation (runtime) alike.
#ifndef BQQ_GATHER_PLUGIN_CREATOR_H
#define BQQ_GATHER_PLUGIN_CREATOR_H

#include <NvInferRuntime.h>

#include "BQQGatherPlugin.h"

namespace bqq
{
namespace trt
{
namespace gather
{

class BQQGatherPluginCreator final : public PluginCreatorBase<BQQGatherPlugin>
{
public:
    // Returns nullptr, after logging which field is wrong, when a field is missing,
    // duplicated, not a single int32, or out of the range docs/FORMAT.md allows.
    nvinfer1::IPluginV3* createPlugin(
        char const* name, nvinfer1::PluginFieldCollection const* fc, nvinfer1::TensorRTPhase phase) noexcept override;
};

}  // namespace gather
}  // namespace trt
}  // namespace bqq

#endif  // BQQ_GATHER_PLUGIN_CREATOR_H
