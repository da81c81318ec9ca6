#include "BQQPluginCommon.h"

#include <cstdio>
#include <cstring>
#include <mutex>
#include <sstream>

#include "bqq_layout.h"

namespace bqq
{
namespace trt
{

using nvinfer1::Dims;
using nvinfer1::ILogger;
using nvinfer1::PluginField;
using nvinfer1::PluginFieldType;

namespace
{

std::mutex gLoggerMutex;
nvinfer1::ILoggerFinder* gLoggerFinder{nullptr};

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

}  // namespace

BQQLayout toLayout(FieldValues const& fields) noexcept
{
    BQQLayout layout{};
    layout.M = fields[kFieldOutFeatures];
    layout.K = fields[kFieldInFeatures];
    layout.group_rows = fields[kFieldGroupRows];
    layout.group_cols = fields[kFieldGroupCols];
    layout.rank = fields[kFieldRank];
    layout.stacks = fields[kFieldStacks];
    return layout;
}

bool parseFields(nvinfer1::PluginFieldCollection const* fc, FieldNames const& names, char const* extraName,
    int32_t* extraValue, char const* plugin, FieldValues& values, std::string& error)
{
    if (extraValue != nullptr)
    {
        *extraValue = -1;
    }
    if (fc == nullptr || (fc->nbFields > 0 && fc->fields == nullptr))
    {
        error = "no creation fields given";
        return false;
    }
    std::array<bool, kNbFields> seen{};
    bool extraSeen = false;
    for (int32_t i = 0; i < fc->nbFields; ++i)
    {
        PluginField const& field = fc->fields[i];
        if (field.name == nullptr)
        {
            error = "field " + std::to_string(i) + " has no name";
            return false;
        }
        std::string const name = field.name;
        int32_t* target = nullptr;
        bool* seenFlag = nullptr;
        if (extraName != nullptr && name == extraName)
        {
            target = extraValue;
            seenFlag = &extraSeen;
        }
        for (int32_t index = 0; index < kNbFields && target == nullptr; ++index)
        {
            if (name == names[index])
            {
                target = &values[index];
                seenFlag = &seen[index];
            }
        }
        if (target == nullptr)
        {
            // The ONNX parser only passes the fields getFieldNames lists; anything else is not ours.
            logMessage(ILogger::Severity::kWARNING, std::string(plugin) + ": ignoring unknown field '" + name + "'");
            continue;
        }
        if (*seenFlag)
        {
            error = "field '" + name + "' is given twice";
            return false;
        }
        if (!readInt32(field, *target, error))
        {
            return false;
        }
        *seenFlag = true;
    }
    std::string missing;
    for (int32_t index = 0; index < kNbFields; ++index)
    {
        if (!seen[index])
        {
            missing += (missing.empty() ? "" : ", ") + std::string(names[index]);
        }
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
    return true;
}

FieldNameCollection::FieldNameCollection(FieldNames const& names) noexcept
{
    for (int32_t i = 0; i < kNbFields; ++i)
    {
        mFields[i] = PluginField(names[i], nullptr, PluginFieldType::kINT32, 1);
    }
    mCollection.nbFields = kNbFields;
    mCollection.fields = mFields.data();
}

std::string dimsToString(Dims const& dims)
{
    std::ostringstream os;
    os << '[';
    for (int32_t i = 0; i < dims.nbDims; ++i)
    {
        os << (i ? "," : "") << dims.d[i];
    }
    os << ']';
    return os.str();
}

bool checkShape(Dims const& got, int32_t index, char const* name, std::array<int64_t, 5> const& want,
    int32_t wantDims, BQQLayout const& layout, bool allowUnknown, std::string& error)
{
    bool ok = got.nbDims == wantDims;
    for (int32_t i = 0; ok && i < wantDims; ++i)
    {
        ok = got.d[i] == want[i] || (allowUnknown && got.d[i] < 0);
    }
    if (ok)
    {
        return true;
    }
    std::ostringstream os;
    os << "input " << index << " (" << name << ") has shape " << dimsToString(got) << ", expected [";
    for (int32_t i = 0; i < wantDims; ++i)
    {
        os << (i ? "," : "") << want[i];
    }
    os << "] from the fields out_features=" << layout.M << " in_features=" << layout.K
       << " group_rows=" << layout.group_rows << " group_cols=" << layout.group_cols << " rank=" << layout.rank
       << " stacks=" << layout.stacks << " (INT32 words, docs/FORMAT.md section 5)";
    error = os.str();
    return false;
}

bool checkPackedInputs(Dims const* dims, BQQLayout const& layout, bool allowUnknown, std::string& error)
{
    Layout const lay = Layout::from(layout);
    return checkShape(dims[kPackedYBits], kPackedYBits, "y_bits", {lay.p, lay.R, lay.C, lay.gr, lay.L}, 5, layout,
               allowUnknown, error)
        && checkShape(dims[kPackedZBits], kPackedZBits, "z_bits", {lay.p, lay.R, lay.C, lay.gc, lay.L}, 5, layout,
            allowUnknown, error)
        && checkShape(dims[kPackedScales], kPackedScales, "scales", {lay.p, lay.R, lay.C, 4, 0}, 4, layout,
            allowUnknown, error);
}

void setLoggerFinder(nvinfer1::ILoggerFinder* finder) noexcept
{
    std::lock_guard<std::mutex> lock(gLoggerMutex);
    gLoggerFinder = finder;
}

void logMessage(ILogger::Severity severity, std::string const& message) noexcept
{
    ILogger* logger = nullptr;
    {
        std::lock_guard<std::mutex> lock(gLoggerMutex);
        if (gLoggerFinder != nullptr)
        {
            logger = gLoggerFinder->findLogger();
        }
    }
    if (logger == nullptr)
    {
        // The logger of the builder/runtime TensorRT created first (self-registering library).
        logger = ::getLogger();
    }
    if (logger != nullptr)
    {
        logger->log(severity, message.c_str());
    }
    else
    {
        std::fprintf(stderr, "%s\n", message.c_str());
    }
}

void logCreateFailure(char const* plugin, char const* layerName, nvinfer1::TensorRTPhase phase,
    std::string const& error) noexcept
{
    try
    {
        logMessage(ILogger::Severity::kERROR,
            std::string(plugin) + " (layer '" + (layerName != nullptr ? layerName : "") + "', "
                + (phase == nvinfer1::TensorRTPhase::kBUILD ? "build" : "engine deserialisation") + "): " + error);
    }
    catch (...)
    {
        std::fprintf(stderr, "%s: out of memory while reporting an error\n", plugin);
    }
}

void reportPluginError(nvinfer1::IErrorRecorder* recorder, PluginIdentity const& plugin, std::string const& layerName,
    std::string const& message, nvinfer1::ErrorCode code) noexcept
{
    try
    {
        std::string const full
            = std::string(plugin.nameSpace) + "::" + plugin.name + " (layer '" + layerName + "'): " + message;
        if (recorder != nullptr)
        {
            recorder->reportError(code, full.c_str());
        }
        else
        {
            logMessage(ILogger::Severity::kERROR, full);
        }
    }
    catch (...)
    {
        std::fprintf(stderr, "%s::%s: out of memory while reporting an error\n", plugin.nameSpace, plugin.name);
    }
}

int64_t volume(Dims const& dims, int32_t first, int32_t end)
{
    int64_t n = 1;
    for (int32_t i = first; i < end; ++i)
    {
        n *= dims.d[i];
    }
    return n;
}

}  // namespace trt
}  // namespace bqq
