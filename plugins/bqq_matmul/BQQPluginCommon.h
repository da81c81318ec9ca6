// What the TensorRT plugins of this library (BQQMatMul, BQQGather) share: the layout fields
// both take, their one validation, the packed-input shape check, logging and error reports.
// Each plugin keeps its own name, version, namespace and field list (kFieldNames) in its own
// header: those are its contract (tests/test_contract.py reads them).
#ifndef BQQ_PLUGIN_COMMON_H
#define BQQ_PLUGIN_COMMON_H

#include <NvInferRuntime.h>

#include <array>
#include <cstdint>
#include <string>

#include "bqq_matmul.h"

namespace bqq
{
namespace trt
{

// Creation fields (ONNX INT attributes -> one int32 each), in the order every plugin's
// kFieldNames lists them and getFieldsToSerialize writes them.
enum FieldIndex : int32_t
{
    kFieldOutFeatures = 0,
    kFieldInFeatures,
    kFieldGroupRows,
    kFieldGroupCols,
    kFieldRank,
    kFieldStacks,
    kFieldFormatVersion,
    kNbFields
};
using FieldValues = std::array<int32_t, kNbFields>;
using FieldNames = std::array<char const*, kNbFields>;

// Both plugins take the packed weight as inputs 1, 2, 3.
constexpr int32_t kPackedYBits = 1;
constexpr int32_t kPackedZBits = 2;
constexpr int32_t kPackedScales = 3;

BQQLayout toLayout(FieldValues const& fields) noexcept;

constexpr bool sameString(char const* a, char const* b)
{
    return *a == *b && (*a == '\0' || sameString(a + 1, b + 1));
}
constexpr bool sameFieldNames(FieldNames const& a, FieldNames const& b)
{
    for (int32_t i = 0; i < kNbFields; ++i)
    {
        if (!sameString(a[i], b[i]))
        {
            return false;
        }
    }
    return true;
}

// The one validation of creation fields, for the ONNX parser (build) and engine
// deserialisation (runtime) alike: every name of `names` present once as one int32,
// format_version == BQQ_FORMAT_VERSION, the ranges of docs/FORMAT.md (bqq_layout_check).
// `extraName` (may be nullptr) is a serialise-only int32 field read into *extraValue (-1 when
// absent); the caller decides whether it is allowed. Unknown fields are logged as warnings,
// labelled with `plugin`, and ignored. On failure returns false with `error` naming the field.
bool parseFields(nvinfer1::PluginFieldCollection const* fc, FieldNames const& names, char const* extraName,
    int32_t* extraValue, char const* plugin, FieldValues& values, std::string& error);

// The collection getFieldNames returns: every name as an int32 of length 1.
class FieldNameCollection
{
public:
    explicit FieldNameCollection(FieldNames const& names) noexcept;
    nvinfer1::PluginFieldCollection const* get() const noexcept
    {
        return &mCollection;
    }

private:
    std::array<nvinfer1::PluginField, kNbFields> mFields{};
    nvinfer1::PluginFieldCollection mCollection{};
};

std::string dimsToString(nvinfer1::Dims const& dims);

// Checks the dims of input `index` (`name`) against `want`; dims of -1 (unknown at build
// time) pass when allowUnknown. On mismatch sets error with both shapes and the fields.
bool checkShape(nvinfer1::Dims const& got, int32_t index, char const* name, std::array<int64_t, 5> const& want,
    int32_t wantDims, BQQLayout const& layout, bool allowUnknown, std::string& error);
// y_bits, z_bits and scales (inputs 1-3) against the layout (docs/FORMAT.md section 5).
bool checkPackedInputs(nvinfer1::Dims const* dims, BQQLayout const& layout, bool allowUnknown, std::string& error);

// Logging for the whole library. The logger comes from the ILoggerFinder that TensorRT hands
// to setLoggerFinder() (IPluginRegistry::loadLibrary path), else from TensorRT's getLogger().
void setLoggerFinder(nvinfer1::ILoggerFinder* finder) noexcept;
void logMessage(nvinfer1::ILogger::Severity severity, std::string const& message) noexcept;

// Logs why createPlugin returns nullptr: "<plugin> (layer '<layer>', build|engine
// deserialisation): <error>".
void logCreateFailure(char const* plugin, char const* layerName, nvinfer1::TensorRTPhase phase,
    std::string const& error) noexcept;

// "<namespace>::<plugin> (layer '<layer>'): <message>" to the execution context's error
// recorder when there is one, else to the logger.
void reportPluginError(nvinfer1::IErrorRecorder* recorder, char const* plugin, std::string const& layerName,
    std::string const& message, nvinfer1::ErrorCode code) noexcept;

// Rows of a lookup or product: the product of every dimension of `dims` from `first` up to
// (not including) `end`.
int64_t volume(nvinfer1::Dims const& dims, int32_t first, int32_t end);

}  // namespace trt
}  // namespace bqq

#endif  // BQQ_PLUGIN_COMMON_H
