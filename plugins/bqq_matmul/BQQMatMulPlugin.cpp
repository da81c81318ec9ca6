#include "BQQMatMulPlugin.h"

#include <algorithm>
#include <utility>

#include "bqq_matmul_cuda.h"

namespace bqq
{
namespace trt
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

// Rows of the product: every dimension of X but the last (K).
int64_t leadingRows(Dims const& dims)
{
    return volume(dims, 0, dims.nbDims - 1);
}

bool isActivationType(DataType type)
{
    return type == DataType::kFLOAT || type == DataType::kHALF;
}

BQQDataType toBQQType(DataType type)
{
    return type == DataType::kHALF ? BQQ_FLOAT16 : BQQ_FLOAT32;
}

}  // namespace

BQQMatMulPlugin::BQQMatMulPlugin(FieldValues const& fields, bool hasBias, std::string layerName)
    : PluginV3Base(std::move(layerName))
    , mFields(fields)
    , mLayout(toLayout(fields))
    , mHasBias(hasBias ? 1 : 0)
{
}

int32_t BQQMatMulPlugin::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    if (nbOutputs != 1 || nbInputs < kMinInputs || nbInputs > kMaxInputs || !isActivationType(inputTypes[kInputX]))
    {
        reportError("expects 4 or 5 inputs with X of type fp32 or fp16, and one output");
        return -1;
    }
    outputTypes[0] = inputTypes[kInputX];
    return 0;
}

int32_t BQQMatMulPlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const* /*shapeInputs*/,
    int32_t /*nbShapeInputs*/, DimsExprs* outputs, int32_t nbOutputs, nvinfer1::IExprBuilder& exprBuilder) noexcept
{
    if (nbOutputs != 1 || nbInputs < kMinInputs || nbInputs > kMaxInputs)
    {
        reportError("expects 4 or 5 inputs (X, y_bits, z_bits, scales[, bias]) and one output");
        return -1;
    }
    DimsExprs const& x = inputs[kInputX];
    if (x.nbDims < 1)
    {
        reportError("input X must have at least one dimension ([..., in_features])");
        return -1;
    }
    nvinfer1::IDimensionExpr const* k = x.d[x.nbDims - 1];
    if (k->isConstant() && k->getConstantValue() != mLayout.K)
    {
        reportError("input 0 (X) has last dimension " + std::to_string(k->getConstantValue())
            + ", but in_features is " + std::to_string(mLayout.K));
        return -1;
    }
    outputs[0] = x;
    outputs[0].d[x.nbDims - 1] = exprBuilder.constant(mLayout.M);
    return 0;
}

bool BQQMatMulPlugin::supportsFormatCombination(
    int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept
{
    if (nbInputs < kMinInputs || nbInputs > kMaxInputs || nbOutputs != 1 || pos < 0 || pos >= nbInputs + nbOutputs)
    {
        return false;
    }
    PluginTensorDesc const& desc = inOut[pos].desc;
    if (desc.format != TensorFormat::kLINEAR)
    {
        return false;
    }
    // TensorRT asks position by position, so X (position 0) is already decided for the others.
    DataType const xType = inOut[kInputX].desc.type;
    if (pos == kInputX)
    {
        return isActivationType(desc.type);
    }
    if (pos == kInputYBits || pos == kInputZBits)
    {
        // INT32 words (BQQMatMul_contract.json): an INT8 tensor is quantized data to TensorRT.
        return desc.type == DataType::kINT32;
    }
    if (pos == kInputScales)
    {
        return desc.type == DataType::kHALF;
    }
    return desc.type == xType;  // bias and the output
}

bool BQQMatMulPlugin::checkInputs(Dims const* dims, int32_t nbInputs, int32_t nbOutputs, bool allowUnknown) const noexcept
{
    if (nbInputs < kMinInputs || nbInputs > kMaxInputs || nbOutputs != 1)
    {
        reportError("expects 4 or 5 inputs (X, y_bits, z_bits, scales[, bias]) and one output, got "
            + std::to_string(nbInputs) + " inputs and " + std::to_string(nbOutputs) + " outputs");
        return false;
    }
    Dims const& x = dims[kInputX];
    if (x.nbDims < 1 || !(x.d[x.nbDims - 1] == mLayout.K || (allowUnknown && x.d[x.nbDims - 1] < 0)))
    {
        reportError("input 0 (X) has shape " + dimsToString(x) + ", expected [..., " + std::to_string(mLayout.K)
            + "] (in_features)");
        return false;
    }

    std::string error;
    if (!checkPackedInputs(dims, mLayout, allowUnknown, error)
        || (nbInputs == kMaxInputs
            && !checkShape(dims[kInputBias], kInputBias, "bias", {mLayout.M}, 1, mLayout, allowUnknown, error)))
    {
        reportError(error);
        return false;
    }
    return true;
}

int32_t BQQMatMulPlugin::configurePlugin(
    DynamicPluginTensorDesc const* in, int32_t nbInputs, DynamicPluginTensorDesc const* /*out*/, int32_t nbOutputs) noexcept
{
    // checkInputs rejects a count outside [kMinInputs, kMaxInputs] before it reads any dims.
    Dims dims[kMaxInputs]{};
    for (int32_t i = 0; i < std::min(nbInputs, kMaxInputs); ++i)
    {
        dims[i] = in[i].desc.dims;
    }
    if (!checkInputs(dims, nbInputs, nbOutputs, /*allowUnknown=*/true))
    {
        return -1;
    }
    mHasBias = nbInputs == kMaxInputs ? 1 : 0;  // serialised with the fields
    return 0;
}

size_t BQQMatMulPlugin::getWorkspaceSize(DynamicPluginTensorDesc const* inputs, int32_t /*nbInputs*/,
    DynamicPluginTensorDesc const* /*outputs*/, int32_t /*nbOutputs*/) const noexcept
{
    // bqq_matmul_cuda_workspace never decreases with rows: the profile's maximum covers all.
    return bqq_matmul_cuda_workspace(&mLayout, leadingRows(inputs[kInputX].max), toBQQType(inputs[kInputX].desc.type));
}

int32_t BQQMatMulPlugin::onShapeChange(
    PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const* /*out*/, int32_t nbOutputs) noexcept
{
    Dims dims[kMaxInputs]{};
    for (int32_t i = 0; i < std::min(nbInputs, kMaxInputs); ++i)
    {
        dims[i] = in[i].dims;
    }
    if (!checkInputs(dims, nbInputs, nbOutputs, /*allowUnknown=*/false))
    {
        return -1;
    }
    if ((nbInputs == kMaxInputs) != (mHasBias != 0))
    {
        reportError(std::string("the engine was built ") + (mHasBias ? "with" : "without") + " the bias input, but "
            + std::to_string(nbInputs) + " inputs are bound");
        return -1;
    }
    return 0;
}

int32_t BQQMatMulPlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* /*outputDesc*/,
    void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept
{
    int64_t const rows = leadingRows(inputDesc[kInputX].dims);
    if (rows == 0)
    {
        return 0;  // empty batch: nothing to write
    }
    BQQDataType const dtype = toBQQType(inputDesc[kInputX].type);
    size_t const workspaceBytes = bqq_matmul_cuda_workspace(&mLayout, rows, dtype);
    BQQStatus const status = bqq_matmul_cuda(&mLayout, rows, dtype, inputs[kInputX],
        static_cast<int32_t const*>(inputs[kInputYBits]), static_cast<int32_t const*>(inputs[kInputZBits]),
        inputs[kInputScales], mHasBias ? inputs[kInputBias] : nullptr, outputs[0], workspace, workspaceBytes, stream);
    if (status == BQQ_OK)
    {
        return 0;
    }
    // bqq_last_error() is complete, advice included (an unsupported GPU architecture names
    // the rebuild command): pass it on as it is.
    std::string const message = std::string("bqq_matmul_cuda: ") + bqq_last_error();
    reportError("enqueue failed (" + std::to_string(rows) + " rows): " + message, nvinfer1::ErrorCode::kFAILED_EXECUTION);
    return -1;
}

nvinfer1::PluginFieldCollection const* BQQMatMulPlugin::getFieldsToSerialize() noexcept
{
    for (int32_t i = 0; i < kNbFields; ++i)
    {
        mSerialFields[i] = PluginField(kFieldNames[i], &mFields[i], PluginFieldType::kINT32, 1);
    }
    mSerialFields[kNbFields] = PluginField(kSerialFieldHasBias, &mHasBias, PluginFieldType::kINT32, 1);
    mSerialCollection.nbFields = kNbFields + 1;
    mSerialCollection.fields = mSerialFields.data();
    return &mSerialCollection;
}

}  // namespace trt
}  // namespace bqq
