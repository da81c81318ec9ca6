#include "BQQGatherPluginCreator.h"

#include <exception>
#include <string>

#include "BQQMatMulPlugin.h"

namespace bqq
{
namespace trt
{
namespace gather
{

// FieldValues are indexed by FieldIndex for both plugins (toLayout); the two lists agree.
static_assert(sameFieldNames(kFieldNames, trt::kFieldNames), "BQQGather and BQQMatMul fields differ in order");

nvinfer1::IPluginV3* BQQGatherPluginCreator::createPlugin(
    char const* name, nvinfer1::PluginFieldCollection const* fc, nvinfer1::TensorRTPhase phase) noexcept
{
    try
    {
        FieldValues values{};
        std::string error;
        if (!parseFields(fc, kFieldNames, /*extraName=*/nullptr, /*extraValue=*/nullptr, "bqq::BQQGather", values, error))
        {
            logCreateFailure("bqq::BQQGather", name, phase, error);
            return nullptr;
        }
        return new BQQGatherPlugin(values, name != nullptr ? name : "");
    }
    catch (std::exception const& e)
    {
        logMessage(nvinfer1::ILogger::Severity::kERROR, std::string("bqq::BQQGather: createPlugin failed: ") + e.what());
        return nullptr;
    }
}

}  // namespace gather
}  // namespace trt
}  // namespace bqq
