// What the TensorRT plugins of this library (BQQMatMul, BQQGather) share: the layout fields
// both take, their one validation, the packed-input shape check, logging and error reports,
// and the IPluginV3 / IPluginCreatorV3One plumbing (PluginV3Base, PluginCreatorBase).
// Each plugin keeps its own name, version, namespace and field list (kFieldNames) in its own
// header: those are its contract (tests/test_contract.py reads them).
#ifndef BQQ_PLUGIN_COMMON_H
#define BQQ_PLUGIN_COMMON_H

#include <NvInferRuntime.h>

#include <array>
#include <cstdint>
#include <exception>
#include <string>
#include <utility>

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


// Who a plugin is: what its getPluginName/Version/Namespace and its creator's return, and the
// fields its creator lists. Each plugin class holds one as `static constexpr kIdentity`.
struct PluginIdentity
{
    char const* name;
    char const* version;
    char const* nameSpace;
    FieldNames const& fields;
};

// "<namespace>::<plugin> (layer '<layer>'): <message>" to the execution context's error
// recorder when there is one, else to the logger.
void reportPluginError(nvinfer1::IErrorRecorder* recorder, PluginIdentity const& plugin, std::string const& layerName,
    std::string const& message, nvinfer1::ErrorCode code) noexcept;

// The IPluginV3 members that are the same for every plugin here: the capability views, clone
// (by Derived's copy constructor), the identity, the single output, attachToContext (a clone
// that reports to the context's error recorder) and error reports labelled with the layer.
// Derived implements the rest of IPluginV3OneBuild and IPluginV3OneRuntime.
template <class Derived>
class PluginV3Base : public nvinfer1::IPluginV3,
                     public nvinfer1::IPluginV3OneCore,
                     public nvinfer1::IPluginV3OneBuild,
                     public nvinfer1::IPluginV3OneRuntime
{
public:
    // layerName (the network layer's name) only labels error messages.
    explicit PluginV3Base(std::string layerName)
        : mLayerName(std::move(layerName))
    {
    }

    nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override
    {
        switch (type)
        {
        case nvinfer1::PluginCapabilityType::kCORE: return static_cast<nvinfer1::IPluginV3OneCore*>(this);
        case nvinfer1::PluginCapabilityType::kBUILD: return static_cast<nvinfer1::IPluginV3OneBuild*>(this);
        case nvinfer1::PluginCapabilityType::kRUNTIME: return static_cast<nvinfer1::IPluginV3OneRuntime*>(this);
        }
        return nullptr;
    }

    nvinfer1::IPluginV3* clone() noexcept override
    {
        try
        {
            return new Derived(static_cast<Derived const&>(*this));
        }
        catch (std::exception const& e)
        {
            reportError(std::string("clone failed: ") + e.what());
            return nullptr;
        }
    }

    nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* context) noexcept override
    {
        auto* plugin = static_cast<Derived*>(clone());
        if (plugin != nullptr && context != nullptr)
        {
            static_cast<PluginV3Base*>(plugin)->mErrorRecorder = context->getErrorRecorder();
        }
        return plugin;
    }

    char const* getPluginName() const noexcept override
    {
        return Derived::kIdentity.name;
    }
    char const* getPluginVersion() const noexcept override
    {
        return Derived::kIdentity.version;
    }
    char const* getPluginNamespace() const noexcept override
    {
        return Derived::kIdentity.nameSpace;
    }

    int32_t getNbOutputs() const noexcept override
    {
        return 1;
    }

protected:
    // To the execution context's error recorder once attached, else to the logger.
    void reportError(std::string const& message,
        nvinfer1::ErrorCode code = nvinfer1::ErrorCode::kINVALID_ARGUMENT) const noexcept
    {
        reportPluginError(mErrorRecorder, Derived::kIdentity, mLayerName, message, code);
    }

private:
    std::string mLayerName;
    nvinfer1::IErrorRecorder* mErrorRecorder{nullptr};
};

// A creator's identity and field list, from Plugin::kIdentity. Derived creators implement
// createPlugin, the one place their plugin's fields are validated.
template <class Plugin>
class PluginCreatorBase : public nvinfer1::IPluginCreatorV3One
{
public:
    PluginCreatorBase() noexcept
        : mFieldNames(Plugin::kIdentity.fields)
    {
    }

    char const* getPluginName() const noexcept override
    {
        return Plugin::kIdentity.name;
    }
    char const* getPluginVersion() const noexcept override
    {
        return Plugin::kIdentity.version;
    }
    char const* getPluginNamespace() const noexcept override
    {
        return Plugin::kIdentity.nameSpace;
    }
    nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override
    {
        return mFieldNames.get();
    }

private:
    FieldNameCollection mFieldNames;
};

// Rows of a lookup or product: the product of every dimension of `dims` from `first` up to
// (not including) `end`.
int64_t volume(nvinfer1::Dims const& dims, int32_t first, int32_t end);

}  // namespace trt
}  // namespace bqq

#endif  // BQQ_PLUGIN_COMMON_H
