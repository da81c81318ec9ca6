#include "BQQGatherPlugin.h"

#include <utility>

#include "bqq_gather_cuda.h"

namespace bqq
{
namespace trt
{
namespace gather
{

using nvinfer1::DataType;
using nvinfer1::Dims;
using nvinfer1::DimsExprs;
using nvinfer1::DynamicPluginTensorDesc;
using nvinfer1::PluginField;
using nvinfer1::PluginFieldType;
using nvinfer1::PluginTensorDesc;
using nvinfer1::TensorFormat;

namespace
{

bool isIndexType(DataType type)
{
    return type == DataType::kINT32 || type == DataType::kINT64;
}

bool isValueType(DataType type)
{
    return type == DataType::kFLOAT || type == DataType::kHALF;
}

}  // namespace

BQQGatherPlugin::BQQGatherPlugin(FieldValues const& fields, std::string layerName)
    : PluginV3Base(std::move(layerName))
    , mFields(fields)
    , mLayout(toLayout(fields))
{
}

int32_t BQQGatherPlugin::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    if (nbOutputs != 1 || nbInputs != kNbInputs || !isIndexType(inputTypes[kInputIndices])
        || !isValueType(inputTypes[kInputScales]))
    {
        reportError("expects 4 inputs (indices int32/int64, y_bits, z_bits, scales fp32/fp16) and one output");
        return -1;
    }
    outputTypes[0] = inputTypes[kInputScales];  // the contract: the output has the scales' type
    return 0;
}

int32_t BQQGatherPlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const* /*shapeInputs*/,
    int32_t /*nbShapeInputs*/, DimsExprs* outputs, int32_t nbOutputs, nvinfer1::IExprBuilder& exprBuilder) noexcept
{
    if (nbOutputs != 1 || nbInputs != kNbInputs)
    {
        reportError("expects 4 inputs (indices, y_bits, z_bits, scales) and one output");
        return -1;
    }
    DimsExprs const& indices = inputs[kInputIndices];
    if (indices.nbDims < 0 || indices.nbDims >= Dims::MAX_DIMS)
    {
        reportError("input 0 (indices) has " + std::to_string(indices.nbDims) + " dimensions; the output adds one and "
            + "TensorRT allows at most " + std::to_string(Dims::MAX_DIMS));
        return -1;
    }
    outputs[0] = indices;
    outputs[0].nbDims = indices.nbDims + 1;
    outputs[0].d[indices.nbDims] = exprBuilder.constant(mLayout.K);
    return 0;
}

bool BQQGatherPlugin::supportsFormatCombination(
    int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept
{
    if (nbInputs != kNbInputs || nbOutputs != 1 || pos < 0 || pos >= nbInputs + nbOutputs)
    {
        return false;
    }
    PluginTensorDesc const& desc = inOut[pos].desc;
    if (desc.format != TensorFormat::kLINEAR)
    {
        return false;
    }
    switch (pos)
    {
    case kInputIndices: return isIndexType(desc.type);
    case kInputYBits:
    case kInputZBits: return desc.type == DataType::kINT32;  // the words (BQQGather_contract.json)
    case kInputScales: return isValueType(desc.type);
    default: return desc.type == inOut[kInputScales].desc.type;  // output: decided after the scales
    }
}

bool BQQGatherPlugin::checkInputs(Dims const* dims, int32_t nbInputs, int32_t nbOutputs, bool allowUnknown) const noexcept
{
    if (nbInputs != kNbInputs || nbOutputs != 1)
    {
        reportError("expects 4 inputs (indices, y_bits, z_bits, scales) and one output, got " + std::to_string(nbInputs)
            + " inputs and " + std::to_string(nbOutputs) + " outputs");
        return false;
    }
    std::string error;
    if (!checkPackedInputs(dims, mLayout, allowUnknown, error))
    {
        reportError(error);
        return false;
    }
    return true;
}

int32_t BQQGatherPlugin::configurePlugin(
    DynamicPluginTensorDesc const* in, int32_t nbInputs, DynamicPluginTensorDesc const* /*out*/, int32_t nbOutputs) noexcept
{
    Dims dims[kNbInputs]{};
    for (int32_t i = 0; i < nbInputs && i < kNbInputs; ++i)
    {
        dims[i] = in[i].desc.dims;
    }
    return checkInputs(dims, nbInputs, nbOutputs, /*allowUnknown=*/true) ? 0 : -1;
}

size_t BQQGatherPlugin::getWorkspaceSize(DynamicPluginTensorDesc const* /*inputs*/, int32_t /*nbInputs*/,
    DynamicPluginTensorDesc const* /*outputs*/, int32_t /*nbOutputs*/) const noexcept
{
    return 0;  // one kernel launch, no scratch memory
}

int32_t BQQGatherPlugin::onShapeChange(
    PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const* /*out*/, int32_t nbOutputs) noexcept
{
    Dims dims[kNbInputs]{};
    for (int32_t i = 0; i < nbInputs && i < kNbInputs; ++i)
    {
        dims[i] = in[i].dims;
    }
    return checkInputs(dims, nbInputs, nbOutputs, /*allowUnknown=*/false) ? 0 : -1;
}

int32_t BQQGatherPlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* /*outputDesc*/,
    void const* const* inputs, void* const* outputs, void* /*workspace*/, cudaStream_t stream) noexcept
{
    Dims const& indices = inputDesc[kInputIndices].dims;
    int64_t const count = volume(indices, 0, indices.nbDims);
    if (count == 0)
    {
        return 0;  // empty lookup: nothing to write
    }
    BQQIndexType const indexType
        = inputDesc[kInputIndices].type == DataType::kINT64 ? BQQ_INDEX_INT64 : BQQ_INDEX_INT32;
    BQQDataType const dtype = inputDesc[kInputScales].type == DataType::kHALF ? BQQ_FLOAT16 : BQQ_FLOAT32;
    // Out-of-range indices give zero rows (bqq_gather.h); TensorRT has no channel for an
    // asynchronous data error, so no flag is read back here.
    BQQStatus const status = bqq_gather_cuda(&mLayout, count, indexType, inputs[kInputIndices], dtype,
        static_cast<int32_t const*>(inputs[kInputYBits]), static_cast<int32_t const*>(inputs[kInputZBits]),
        inputs[kInputScales], outputs[0], /*out_of_range=*/nullptr, stream);
    if (status == BQQ_OK)
    {
        return 0;
    }
    reportError("enqueue failed (" + std::to_string(count) + " indices): bqq_gather_cuda: " + bqq_last_error(),
        nvinfer1::ErrorCode::kFAILED_EXECUTION);
    return -1;
}

nvinfer1::PluginFieldCollection const* BQQGatherPlugin::getFieldsToSerialize() noexcept
{
    for (int32_t i = 0; i < kNbFields; ++i)
    {
        mSerialFields[i] = PluginField(kFieldNames[i], &mFields[i], PluginFieldType::kINT32, 1);
    }
    mSerialCollection.nbFields = kNbFields;
    mSerialCollection.fields = mSerialFields.data();
    return &mSerialCollection;
}

}  // namespace gather
}  // namespace trt
}  // namespace bqq
