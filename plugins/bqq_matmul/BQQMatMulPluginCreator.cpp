#include "BQQMatMulPluginCreator.h"

#include <exception>
#include <string>

namespace bqq
{
namespace trt
{

namespace
{

// Fills values and hasBias from fc (parseFields: the shared validation) and applies the rule
// of the serialise-only has_bias field: required at the runtime phase, refused at build time.
bool parseMatMulFields(nvinfer1::PluginFieldCollection const* fc, nvinfer1::TensorRTPhase phase, FieldValues& values,
    bool& hasBias, std::string& error)
{
    int32_t biasFlag = -1;
    if (!parseFields(fc, kFieldNames, kSerialFieldHasBias, &biasFlag, "bqq::BQQMatMul", values, error))
    {
        return false;
    }
    bool const runtime = phase == nvinfer1::TensorRTPhase::kRUNTIME;
    if (!runtime && biasFlag != -1)
    {
        error = std::string("field '") + kSerialFieldHasBias
            + "' is written by the plugin into the engine; at build time the input count decides it";
        return false;
    }
    if (runtime && biasFlag == -1)
    {
        error = std::string("missing field(s): ") + kSerialFieldHasBias
            + " (an engine serialised by an older plugin: rebuild the engine)";
        return false;
    }
    if (runtime && biasFlag != 0 && biasFlag != 1)
    {
        error = std::string("field '") + kSerialFieldHasBias + "' must be 0 or 1, got " + std::to_string(biasFlag);
        return false;
    }
    hasBias = biasFlag == 1;
    return true;
}

}  // namespace

nvinfer1::IPluginV3* BQQMatMulPluginCreator::createPlugin(
    char const* name, nvinfer1::PluginFieldCollection const* fc, nvinfer1::TensorRTPhase phase) noexcept
{
    try
    {
        FieldValues values{};
        bool hasBias = false;
        std::string error;
        if (!parseMatMulFields(fc, phase, values, hasBias, error))
        {
            logCreateFailure("bqq::BQQMatMul", name, phase, error);
            return nullptr;
        }
        return new BQQMatMulPlugin(values, hasBias, name != nullptr ? name : "");
    }
    catch (std::exception const& e)
    {
        logMessage(nvinfer1::ILogger::Severity::kERROR, std::string("bqq::BQQMatMul: createPlugin failed: ") + e.what());
        return nullptr;
    }
}

}  // namespace trt
}  // namespace bqq
