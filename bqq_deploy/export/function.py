"""The BQQ nodes as the exporter writes them (contracts: BQQMatMul_contract.json,
BQQGather_contract.json): their attributes, and the model-local ONNX function
`bqq::BQQDecode` written in standard ops so a stock ONNX Runtime runs the portable file."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from ..format import BQQWeight
from ..layout import FORMAT_VERSION, WORD_BITS
from .. import contract

# Bit b of a word is set iff (word & mask[b]) != 0; bit 31 is the sign bit of an INT32.
_BIT_MASKS = (np.uint32(1) << np.arange(WORD_BITS, dtype=np.uint32)).view(np.int32)


def node_attributes(weight: BQQWeight, op: contract.Contract | None = None) -> dict:
    """Attributes of a BQQ node for one layer, in contract order; with a plugin op's
    contract, the TensorRT plugin lookup strings too."""
    fields, spec = weight.layout.fields, op or contract.MATMUL
    attrs = {name: fields[spec.attribute_fields[name]] if name in spec.attribute_fields
             else FORMAT_VERSION for name in spec.int_attributes}
    if op is not None:
        attrs.update(op.lookup_attributes)
    return attrs


_FLOAT_TYPES = {"float32": TensorProto.FLOAT, "float16": TensorProto.FLOAT16}


def decode_function(opset: int, dtype: str = "float32") -> onnx.FunctionProto:
    """bqq::BQQDecode(y_bits, z_bits, scales) -> W_hat [M, K] in dtype, the model-local
    function of the portable file.

    It rebuilds the weight from the INT32 bit words and fp16 scales (FORMAT.md s.1),
    computing in fp32 and casting once at the end. Its inputs are initializers and every
    shape it uses comes from the node attributes (out_features, in_features), so ONNX
    Runtime folds it into one constant W_hat when it loads the session: at run time the file
    is the float graph. The bits past `rank` are zero by contract, so no slicing to rank."""
    make = helper.make_node
    i64 = lambda name, values: make(  # noqa: E731
        "Constant", [], [name], value=helper.make_tensor(name, TensorProto.INT64, [len(values)], values))
    nodes = [make("Constant", [], ["masks"], value=helper.make_tensor(
                 "masks", TensorProto.INT32, [WORD_BITS], _BIT_MASKS.tolist())),
             i64("ax_last", [-1]), i64("ax_first", [0]), i64("keep4", [0, 0, 0, 0, -1])]
    # Bits as floats: [p, R, C, g, L] INT32 -> [p, R, C, g, 32L] {0, 1}. A masked word is
    # nonzero iff its bit is set; Cast to bool says exactly that, in one pass.
    for src in ("y", "z"):
        nodes += [make("Unsqueeze", [f"{src}_bits", "ax_last"], [f"{src}_u"]),
                  make("BitwiseAnd", [f"{src}_u", "masks"], [f"{src}_and"]),
                  make("Cast", [f"{src}_and"], [f"{src}_set"], to=TensorProto.BOOL),
                  make("Cast", [f"{src}_set"], [f"{src}_f"], to=TensorProto.FLOAT),
                  make("Reshape", [f"{src}_f", "keep4"], [src])]
    # W = [a_1 Y_1 .. a_p Y_p] [Z_1 .. Z_p]^T + u 1^T + 1 v^T per block: all stacks in one
    # batched product, so every block-sized intermediate exists once, not once per stack;
    # u = sum_k b_k (Y_k 1) + sum_k d_k, v = sum_k c_k (Z_k 1).
    nodes += [make("Cast", ["scales"], ["s"], to=TensorProto.FLOAT),
              make("Unsqueeze", ["s", "ax_last"], ["s_u"])]  # [p, R, C, 4, 1]
    for index, scalar in enumerate("abcd"):  # each [p, R, C, 1, 1]
        nodes += [i64(f"idx_{scalar}", [index]),
                  make("Gather", ["s_u", f"idx_{scalar}"], [f"s_{scalar}"], axis=3)]
    nodes += [
        make("Mul", ["y", "s_a"], ["ya"]),
        make("Transpose", ["ya"], ["ya_t"], perm=[1, 2, 3, 0, 4]),  # [R, C, g_r, p, 32L]
        make("Shape", ["ya_t"], ["ya_shape"], end=3),
        i64("merge", [-1]),
        make("Concat", ["ya_shape", "merge"], ["y_target"], axis=0),
        make("Reshape", ["ya_t", "y_target"], ["y_all"]),  # [R, C, g_r, p*32L]
        make("Transpose", ["z"], ["z_t"], perm=[1, 2, 0, 4, 3]),  # [R, C, p, 32L, g_c]
        make("Shape", ["z_t"], ["z_shape"], start=-1),
        make("Shape", ["z_t"], ["z_lead"], end=2),
        make("Concat", ["z_lead", "merge", "z_shape"], ["z_target"], axis=0),
        make("Reshape", ["z_t", "z_target"], ["z_all"]),  # [R, C, p*32L, g_c]
        make("MatMul", ["y_all", "z_all"], ["w_ab"]),  # [R, C, g_r, g_c]
        make("ReduceSum", ["y", "ax_last"], ["y_rows"], keepdims=1),  # [p, R, C, g_r, 1]
        make("Mul", ["y_rows", "s_b"], ["by"]),
        make("Add", ["by", "s_d"], ["byd"]),
        make("ReduceSum", ["byd", "ax_first"], ["u"], keepdims=0),  # [R, C, g_r, 1]
        make("ReduceSum", ["z", "ax_last"], ["z_rows"], keepdims=1),  # [p, R, C, g_c, 1]
        make("Mul", ["z_rows", "s_c"], ["cz"]),
        make("ReduceSum", ["cz", "ax_first"], ["v_col"], keepdims=0),  # [R, C, g_c, 1]
        make("Transpose", ["v_col"], ["v"], perm=[0, 1, 3, 2]),  # [R, C, 1, g_c]
        make("Add", ["w_ab", "u"], ["w_abd"]),
        make("Add", ["w_abd", "v"], ["blocks"]),  # [R, C, g_r, g_c]
        make("Transpose", ["blocks"], ["blocks_t"], perm=[0, 2, 1, 3]),  # [R, g_r, C, g_c]
        make("Flatten", ["blocks_t"], ["w_padded"], axis=2),  # [R*g_r, C*g_c]
        # The slice ends are the node's own attributes, not shapes of run-time tensors: that
        # is what lets the whole body fold into a constant.
        _attribute_constant("m", "out_features"), _attribute_constant("k", "in_features"),
        make("Unsqueeze", ["m", "ax_first"], ["m1"]), make("Unsqueeze", ["k", "ax_first"], ["k1"]),
        make("Concat", ["m1", "k1"], ["w_ends"], axis=0),
        i64("w_starts", [0, 0]),
        make("Slice", ["w_padded", "w_starts", "w_ends"], ["w_hat"]),  # [M, K] float32
    ]
    if dtype == "float32":
        nodes.append(make("Identity", ["w_hat"], ["W"]))
    else:
        nodes.append(make("Cast", ["w_hat"], ["W"], to=_FLOAT_TYPES[dtype]))
    return helper.make_function(
        contract.DOMAIN, contract.DECODE_OP, inputs=list(contract.MATMUL.inputs[1:4]), outputs=["W"],
        nodes=nodes, opset_imports=[helper.make_opsetid("", opset)],
        attributes=list(contract.MATMUL.int_attributes),
        doc_string="W_hat [M, K] decoded from BQQ packed bits (docs/FORMAT.md, docs/ONNX.md).")


def _attribute_constant(output: str, attribute: str) -> onnx.NodeProto:
    """A scalar int64 Constant holding the enclosing function's INT attribute `attribute`."""
    node = helper.make_node("Constant", [], [output])
    node.attribute.append(helper.make_attribute_ref("value_int", onnx.AttributeProto.INT,
                                                    ref_attr_name=attribute))
    return node
