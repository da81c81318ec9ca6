// TensorRT plugin BQQGather (IPluginV3, TensorRT >= 10.0): Y[..., :] = W_hat[indices[...], :],
// an embedding lookup in a table stored in the BQQ layout (docs/FORMAT.md), computed by
// bqq_gather_cuda (bqq_gather_cuda.h). Contract: BQQGather_contract.json beside this file,
// docs/TENSORRT.md. Built into the same plugin library as BQQMatMul.
#ifndef BQQ_GATHER_PLUGIN_H
#define BQQ_GATHER_PLUGIN_H

#include <NvInferRuntime.h>

#include <array>
#include <cstdint>
#include <string>

#include "BQQPluginCommon.h"
#include "bqq_gather.h"

namespace bqq
{
namespace trt
{
namespace gather
{

constexpr char const* kPluginName = "BQQGather";
constexpr char const* kPluginVersion = "1";
constexpr char const* kPluginNamespace = "bqq";

// Input positions: four inputs, one output. No bias.
enum InputIndex : int32_t
{
    kInputIndices = 0,
    kInputYBits = 1,
    kInputZBits = 2,
    kInputScales = 3,
};
constexpr int32_t kNbInputs = 4;

// Creation fields (ONNX INT attributes -> one int32 each, FieldIndex order), as getFieldNames
// and getFieldsToSerialize list them; nothing is serialised besides them. Validated in one
// place: BQQGatherPluginCreator::createPlugin (through parseFields, BQQPluginCommon.h).
constexpr FieldNames kFieldNames{
    "out_features", "in_features", "group_rows", "group_cols", "rank", "stacks", "format_version"};
static_assert(kInputYBits == kPackedYBits && kInputZBits == kPackedZBits && kInputScales == kPackedScales,
    "the packed inputs are at the positions BQQPluginCommon.h checks");

class BQQGatherPlugin final : public PluginV3Base<BQQGatherPlugin>
{
public:
    static constexpr PluginIdentity kIdentity{kPluginName, kPluginVersion, kPluginNamespace, kFieldNames};

    // fields must have passed validation (only BQQGatherPluginCreator::createPlugin constructs
    // plugins); layerName only labels error messages.
    BQQGatherPlugin(FieldValues const& fields, std::string layerName);
    BQQGatherPlugin(BQQGatherPlugin const& other) = default;
    BQQGatherPlugin& operator=(BQQGatherPlugin const&) = delete;
    ~BQQGatherPlugin() override = default;

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
    // Input/output counts, the packed tensors' shapes against the fields and the output rank.
    // Dimensions of -1 (unknown at build time) pass when allowUnknown is set.
    bool checkInputs(nvinfer1::Dims const* dims, int32_t nbInputs, int32_t nbOutputs, bool allowUnknown) const noexcept;

    FieldValues mFields;
    BQQLayout mLayout;
    // Rebuilt by every getFieldsToSerialize call, so copies never point into another plugin.
    std::array<nvinfer1::PluginField, kNbFields> mSerialFields{};
    nvinfer1::PluginFieldCollection mSerialCollection{};
};

}  // namespace gather
}  // namespace trt
}  // namespace bqq

#endif  // BQQ_GATHER_PLUGIN_H
