// TensorRT plugin BQQMatMul (IPluginV3, TensorRT >= 10.0): y = x W_hat^T + bias on the
// packed layout of docs/FORMAT.md, computed by bqq_matmul_cuda (bqq_matmul_cuda.h).
// Contract (inputs, fields, load paths): docs/TENSORRT.md.
#ifndef BQQ_MATMUL_PLUGIN_H
#define BQQ_MATMUL_PLUGIN_H

#include <NvInferRuntime.h>

#include <array>
#include <cstdint>
#include <string>

#include "BQQPluginCommon.h"
#include "bqq_matmul.h"

namespace bqq
{
namespace trt
{

constexpr char const* kPluginName = "BQQMatMul";
constexpr char const* kPluginVersion = "1";
constexpr char const* kPluginNamespace = "bqq";

// Input positions; the bias input is optional, so a node has 4 or 5 inputs and one output.
enum InputIndex : int32_t
{
    kInputX = 0,
    kInputYBits = 1,
    kInputZBits = 2,
    kInputScales = 3,
    kInputBias = 4,
};
constexpr int32_t kMinInputs = 4;
constexpr int32_t kMaxInputs = 5;

// Creation fields (ONNX INT attributes -> one int32 each, FieldIndex order), as getFieldNames
// and getFieldsToSerialize list them. Validated in one place: BQQMatMulPluginCreator::createPlugin.
constexpr FieldNames kFieldNames{
    "out_features", "in_features", "group_rows", "group_cols", "rank", "stacks", "format_version"};
static_assert(kInputYBits == kPackedYBits && kInputZBits == kPackedZBits && kInputScales == kPackedScales,
    "the packed inputs are at the positions BQQPluginCommon.h checks");
// Serialise-only field (not an ONNX attribute, not in getFieldNames): whether the node has
// the optional bias input, fixed by configurePlugin at build time and written into the
// engine, so that a deserialised plugin knows it before any onShapeChange/enqueue.
// createPlugin requires it in the runtime phase and refuses it in the build phase.
constexpr char const* kSerialFieldHasBias = "has_bias";

class BQQMatMulPlugin final : public PluginV3Base<BQQMatMulPlugin>
{
public:
    static constexpr PluginIdentity kIdentity{kPluginName, kPluginVersion, kPluginNamespace, kFieldNames};

    // fields must have passed validation: only BQQMatMulPluginCreator::createPlugin, which
    // validates them, constructs plugins.
    // layerName (the network layer's name) only labels error messages.
    BQQMatMulPlugin(FieldValues const& fields, bool hasBias, std::string layerName);
    BQQMatMulPlugin(BQQMatMulPlugin const& other) = default;
    BQQMatMulPlugin& operator=(BQQMatMulPlugin const&) = delete;
    ~BQQMatMulPlugin() override = default;

    // IPluginV3OneBuild (getNbOutputs and the IPluginV3/IPluginV3OneCore members: PluginV3Base)
    int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
        nvinfer1::DataType const* inputTypes, int32_t nbInputs) const noexcept override;
    int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs, nvinfer1::DimsExprs const* shapeInputs,
        int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs, int32_t nbOutputs,
        nvinfer1::IExprBuilder& exprBuilder) noexcept override;
    bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
        int32_t nbOutputs) noexcept override;
    int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    size_t getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* outputs, int32_t nbOutputs) const noexcept override;

    // IPluginV3OneRuntime
    int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs, nvinfer1::PluginTensorDesc const* out,
        int32_t nbOutputs) noexcept override;
    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
        void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override;

private:
    // Checks input count, X's last dim and the packed tensors' shapes against the fields.
    // Dimensions of -1 (unknown at build time) pass when allowUnknown is set.
    bool checkInputs(nvinfer1::Dims const* dims, int32_t nbInputs, int32_t nbOutputs, bool allowUnknown) const noexcept;

    FieldValues mFields;
    BQQLayout mLayout;
    // Set by configurePlugin (build) or read from the engine (runtime); onShapeChange checks
    // the input count against it; enqueue gets no input count.
    int32_t mHasBias{0};
    // Rebuilt by every getFieldsToSerialize call, so copies never point into another plugin.
    std::array<nvinfer1::PluginField, kNbFields + 1> mSerialFields{};
    nvinfer1::PluginFieldCollection mSerialCollection{};
};

}  // namespace trt
}  // namespace bqq

#endif  // BQQ_MATMUL_PLUGIN_H
