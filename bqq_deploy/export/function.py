"""The BQQMatMul node as the exporter writes it (contract: BQQMatMul_contract.json): its
attributes, and the model-local ONNX function `bqq::BQQMatMul` written in standard ops so a
stock ONNX Runtime runs the portable file."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from ..format import BQQWeight
from ..layout import FORMAT_VERSION, WORD_BITS
from . import contract

# Bit b of a word is set iff (word & mask[b]) != 0; bit 31 is the sign bit of an INT32.
_BIT_MASKS = (np.uint32(1) << np.arange(WORD_BITS, dtype=np.uint32)).view(np.int32)


def node_attributes(weight: BQQWeight, *, plugin: bool) -> dict:
    """Attributes of the BQQMatMul node for one layer, in contract order; plugin=True adds
    the TensorRT plugin lookup strings."""
    fields = weight.layout.fields
    attrs = {name: fields[contract.ATTRIBUTE_FIELDS[name]] if name in contract.ATTRIBUTE_FIELDS
             else FORMAT_VERSION for name in contract.INT_ATTRIBUTES}
    if plugin:
        attrs.update(contract.LOOKUP_ATTRIBUTES)
    return attrs


def bqq_matmul_function(opset: int) -> onnx.FunctionProto:
    """FunctionProto for bqq::BQQMatMul(X, y_bits, z_bits, scales, bias) -> Y.

    The body rebuilds W_hat [M, K] from the INT32 bit words and fp16 scales (FORMAT.md s.1) and
    computes X W_hat^T + bias in the dtype of X. Every input of the body is an initializer,
    so ONNX Runtime folds the decode into a constant when it loads the file. The bits of
    the last word past `rank` are zero by contract, so the body needs no slicing to rank;
    the block padding is sliced away by the shape of bias (M) and X (K)."""
    make = helper.make_node
    i64 = lambda name, values: make(  # noqa: E731
        "Constant", [], [name], value=helper.make_tensor(name, TensorProto.INT64, [len(values)], values))
    nodes = [
        make("Constant", [], ["masks"], value=helper.make_tensor(
            "masks", TensorProto.INT32, [WORD_BITS], _BIT_MASKS.tolist())),
        make("Constant", [], ["zero"], value=helper.make_tensor("zero", TensorProto.INT32, [], [0])),
        i64("ax_last", [-1]), i64("ax_first", [0]), i64("zero1", [0]), i64("four", [4]),
        i64("minus2", [-2]), i64("minus1", [-1]),
    ]
    for src in ("y", "z"):  # [p, R, C, g, L] INT32 -> [p, R, C, g, 32L] float {0, 1}
        nodes += [
            make("Unsqueeze", [f"{src}_bits", "ax_last"], [f"{src}_u"]),
            make("BitwiseAnd", [f"{src}_u", "masks"], [f"{src}_and"]),
            make("Equal", [f"{src}_and", "zero"], [f"{src}_zero"]),
            make("Not", [f"{src}_zero"], [f"{src}_set"]),
            make("Cast", [f"{src}_set"], [f"{src}_f"], to=TensorProto.FLOAT),
            make("Shape", [f"{src}_bits"], [f"{src}_shape"], end=4),
            make("Concat", [f"{src}_shape", "minus1"], [f"{src}_target"], axis=0),
            make("Reshape", [f"{src}_f", f"{src}_target"], [src]),
            make("ReduceSum", [src, "ax_last"], [f"{src}_sum"], keepdims=1),  # [p,R,C,g,1]
        ]
    nodes += [
        make("Transpose", ["z"], ["z_t"], perm=[0, 1, 2, 4, 3]),
        make("MatMul", ["y", "z_t"], ["yz"]),  # [p, R, C, g_r, g_c]
        make("Cast", ["scales"], ["scales_f"], to=TensorProto.FLOAT),
        make("Unsqueeze", ["scales_f", "ax_last"], ["scales_u"]),  # [p, R, C, 4, 1]
    ]
    for index, scalar in enumerate("abcd"):  # each [p, R, C, 1, 1]
        nodes += [i64(f"idx_{scalar}", [index]),
                  make("Gather", ["scales_u", f"idx_{scalar}"], [f"s_{scalar}"], axis=3)]
    nodes += [
        make("Mul", ["s_a", "yz"], ["term_a"]),
        make("Mul", ["s_b", "y_sum"], ["term_b"]),  # (Y 1) 1^T: [p, R, C, g_r, 1]
        make("Transpose", ["z_sum"], ["z_sum_t"], perm=[0, 1, 2, 4, 3]),
        make("Mul", ["s_c", "z_sum_t"], ["term_c"]),  # 1 (1^T Z): [p, R, C, 1, g_c]
        make("Add", ["term_a", "term_b"], ["term_ab"]),
        make("Add", ["term_ab", "term_c"], ["term_abc"]),
        make("Add", ["term_abc", "s_d"], ["stack_blocks"]),
        make("ReduceSum", ["stack_blocks", "ax_first"], ["blocks"], keepdims=0),  # [R,C,g_r,g_c]
        make("Transpose", ["blocks"], ["blocks_t"], perm=[0, 2, 1, 3]),  # [R, g_r, C, g_c]
        make("Flatten", ["blocks_t"], ["w_padded"], axis=2),  # [R*g_r, C*g_c]
        make("Shape", ["bias"], ["m"]),
        make("Shape", ["X"], ["k"], start=-1),
        make("Concat", ["m", "k"], ["w_ends"], axis=0),
        i64("w_starts", [0, 0]),
        make("Slice", ["w_padded", "w_starts", "w_ends"], ["w_hat"]),  # [M, K]
        make("Transpose", ["w_hat"], ["w_hat_t"], perm=[1, 0]),
        make("CastLike", ["w_hat_t", "X"], ["w_x"]),
        make("MatMul", ["X", "w_x"], ["xw"]),
        make("Add", ["xw", "bias"], ["Y"]),
    ]
    return helper.make_function(
        contract.DOMAIN, contract.OP_TYPE, inputs=list(contract.INPUTS), outputs=["Y"],
        nodes=nodes, opset_imports=[helper.make_opsetid("", opset)],
        attributes=list(contract.INT_ATTRIBUTES),
        doc_string="Y = X W_hat^T + bias, W_hat decoded from BQQ packed bits "
                   "(docs/FORMAT.md, docs/ONNX.md). Reference body for ONNX Runtime.")
