#include "BQQMatMulPluginCreator.h"

#include <cstring>
#include <exception>
#include <string>

namespace bqq
{
namespace trt
{

using nvinfer1::PluginField;
using nvinfer1::PluginFieldType;

namespace
{

// Reads one int32 field into value; false (with error naming the field) otherwise.
bool readInt32(PluginField const& field, int32_t& value, std::string& error)
{
    if (field.type != PluginFieldType::kINT32 || field.length != 1 || field.data == nullptr)
    {
        error = "field '" + std::string(field.name) + "' must be one int32 (an ONNX INT attribute), got type code "
            + std::to_string(static_cast<int32_t>(field.type)) + " with length " + std::to_string(field.length);
        return false;
    }
    std::memcpy(&value, field.data, sizeof(int32_t));
    return true;
}

// Fills values (and hasBias, the serialise-only field of the runtime phase) from fc; on
// failure returns false and sets error to a message naming the field.
bool parseFields(nvinfer1::PluginFieldCollection const* fc, nvinfer1::TensorRTPhase phase, FieldValues& values,
    bool& hasBias, std::string& error)
{
    bool const runtime = phase == nvinfer1::TensorRTPhase::kRUNTIME;
    if (fc == nullptr || (fc->nbFields > 0 && fc->fields == nullptr))
    {
        error = "no creation fields given";
        return false;
    }
    std::array<bool, kNbFields> seen{};
    int32_t biasFlag = -1;
    for (int32_t i = 0; i < fc->nbFields; ++i)
    {
        PluginField const& field = fc->fields[i];
        if (field.name == nullptr)
        {
            error = "field " + std::to_string(i) + " has no name";
            return false;
        }
        if (std::strcmp(field.name, kSerialFieldHasBias) == 0)
        {
            if (!runtime)
            {
                error = std::string("field '") + kSerialFieldHasBias
                    + "' is written by the plugin into the engine; at build time the input count decides it";
                return false;
            }
            if (biasFlag != -1)
            {
                error = std::string("field '") + kSerialFieldHasBias + "' is given twice";
                return false;
            }
            if (!readInt32(field, biasFlag, error))
            {
                return false;
            }
            if (biasFlag != 0 && biasFlag != 1)
            {
                error = std::string("field '") + kSerialFieldHasBias + "' must be 0 or 1, got " + std::to_string(biasFlag);
                return false;
            }
            continue;
        }
        int32_t index = 0;
        while (index < kNbFields && std::strcmp(field.name, kFieldNames[index]) != 0)
        {
            ++index;
        }
        if (index == kNbFields)
        {
            // The ONNX parser only passes the fields getFieldNames lists; anything else is not ours.
            logMessage(nvinfer1::ILogger::Severity::kWARNING,
                std::string("bqq::BQQMatMul: ignoring unknown field '") + field.name + "'");
            continue;
        }
        std::string const name = field.name;
        if (seen[index])
        {
            error = "field '" + name + "' is given twice";
            return false;
        }
        if (!readInt32(field, values[index], error))
        {
            return false;
        }
        seen[index] = true;
    }
    std::string missing;
    for (int32_t index = 0; index < kNbFields; ++index)
    {
        if (!seen[index])
        {
            missing += (missing.empty() ? "" : ", ") + std::string(kFieldNames[index]);
        }
    }
    if (runtime && biasFlag == -1)
    {
        missing += (missing.empty() ? "" : ", ") + std::string(kSerialFieldHasBias)
            + " (an engine serialised by an older plugin: rebuild the engine)";
    }
    if (!missing.empty())
    {
        error = "missing field(s): " + missing;
        return false;
    }
    if (values[kFieldFormatVersion] != BQQ_FORMAT_VERSION)
    {
        error = "format_version is " + std::to_string(values[kFieldFormatVersion]) + ", this plugin reads only "
            + std::to_string(BQQ_FORMAT_VERSION) + " (docs/FORMAT.md)";
        return false;
    }
    BQQLayout const layout = toLayout(values);
    if (bqq_layout_check(&layout) != BQQ_OK)
    {
        error = std::string("invalid layout fields: ") + bqq_last_error();
        return false;
    }
    hasBias = biasFlag == 1;
    return true;
}

}  // namespace

BQQMatMulPluginCreator::BQQMatMulPluginCreator() noexcept
{
    for (int32_t i = 0; i < kNbFields; ++i)
    {
        mFieldNames[i] = PluginField(kFieldNames[i], nullptr, PluginFieldType::kINT32, 1);
    }
    mFieldCollection.nbFields = kNbFields;
    mFieldCollection.fields = mFieldNames.data();
}

char const* BQQMatMulPluginCreator::getPluginName() const noexcept
{
    return kPluginName;
}

char const* BQQMatMulPluginCreator::getPluginVersion() const noexcept
{
    return kPluginVersion;
}

char const* BQQMatMulPluginCreator::getPluginNamespace() const noexcept
{
    return kPluginNamespace;
}

nvinfer1::PluginFieldCollection const* BQQMatMulPluginCreator::getFieldNames() noexcept
{
    return &mFieldCollection;
}

nvinfer1::IPluginV3* BQQMatMulPluginCreator::createPlugin(
    char const* name, nvinfer1::PluginFieldCollection const* fc, nvinfer1::TensorRTPhase phase) noexcept
{
    try
    {
        std::string const layer = name != nullptr ? name : "";
        FieldValues values{};
        bool hasBias = false;
        std::string error;
        if (!parseFields(fc, phase, values, hasBias, error))
        {
            logMessage(nvinfer1::ILogger::Severity::kERROR,
                std::string("bqq::BQQMatMul (layer '") + layer + "', "
                    + (phase == nvinfer1::TensorRTPhase::kBUILD ? "build" : "engine deserialisation")
                    + "): " + error);
            return nullptr;
        }
        return new BQQMatMulPlugin(values, hasBias, layer);
    }
    catch (std::exception const& e)
    {
        logMessage(nvinfer1::ILogger::Severity::kERROR, std::string("bqq::BQQMatMul: createPlugin failed: ") + e.what());
        return nullptr;
    }
}

}  // namespace trt
}  // namespace bqq
