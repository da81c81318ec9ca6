"""The BQQ nodes as the exporter writes them (contracts: BQQMatMul_contract.json,
BQQGather_contract.json): their attributes, and the model-local ONNX function
`bqq::BQQDecode` written in standard ops so a stock ONNX Runtime runs the portable file."""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

from ..format import BQQWeight
from ..layout import FORMAT_VERSION
from .. import contract


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
    shape it uses comes from the node attributes (out_features, in_features) or the inputs'
    shapes, so ONNX Runtime folds it into one constant W_hat when it loads the session: at
    run time the file is the float graph. The fold keeps every intermediate until it ends, so
    the body is written for few, small ones: bits tested on bytes (one byte per bit), popcounts
    on the words, no reshape of a bit-sized tensor. The bits past `rank` are zero by contract,
    so nothing is sliced to rank."""
    make = helper.make_node

    def const(name, kind, values, dims=None):
        dims = [len(values)] if dims is None else dims
        return make("Constant", [], [name], value=helper.make_tensor(name, kind, dims, values))

    u32 = TensorProto.UINT32
    nodes = [const("ax_last", TensorProto.INT64, [-1]), const("byte_shifts", u32, [0, 8, 16, 24]),
             const("low_byte", u32, [0xFF]),
             const("bit_masks", TensorProto.UINT8, [1 << b for b in range(8)])]
    # Words [p, R, C, g, L] -> [R, C, g, p, L] while packed (32x smaller than the bits), then
    # their bytes, little end first, then each byte's bits: [R, C, g, p, L, 4, 8] BOOL, which is
    # bit 32 l + 8 j + b of a row, the order of FORMAT.md.
    for src in ("y", "z"):
        nodes += [make("Transpose", [f"{src}_bits"], [f"{src}_t"], perm=[1, 2, 3, 0, 4]),
                  make("Cast", [f"{src}_t"], [f"{src}_words"], to=u32),
                  make("Unsqueeze", [f"{src}_words", "ax_last"], [f"{src}_w1"]),
                  make("BitShift", [f"{src}_w1", "byte_shifts"], [f"{src}_shifted"], direction="RIGHT"),
                  make("BitwiseAnd", [f"{src}_shifted", "low_byte"], [f"{src}_b32"]),
                  make("Cast", [f"{src}_b32"], [f"{src}_bytes"], to=TensorProto.UINT8),
                  make("Unsqueeze", [f"{src}_bytes", "ax_last"], [f"{src}_b1"]),
                  make("BitwiseAnd", [f"{src}_b1", "bit_masks"], [f"{src}_and"]),
                  make("Cast", [f"{src}_and"], [f"{src}_set"], to=TensorProto.BOOL)]
    # Scales [p, R, C, 4] -> a, b, c, d, each [R, C, 1, p].
    nodes += [make("Cast", ["scales"], ["s"], to=TensorProto.FLOAT),
              make("Transpose", ["s"], ["s_t"], perm=[1, 2, 3, 0]),
              make("Split", ["s_t"], ["s_a", "s_b", "s_c", "s_d"], axis=2, num_outputs=4)]
    # Per stack k a block is a_k Y_k Z_k^T + b_k (Y_k 1) 1^T + c_k 1 (Z_k 1)^T + d_k 1 1^T.
    # The b term rides in the product: Y_k (a_k Z_k + b_k)^T = a_k Y_k Z_k^T + b_k (Y_k 1) 1^T.
    nodes += [const("bit_axes", TensorProto.INT64, [4, 5, 6]),
              make("Add", ["s_a", "s_b"], ["s_ab"]),
              make("Unsqueeze", ["s_ab", "bit_axes"], ["on"]),  # [R, C, 1, p, 1, 1, 1]
              make("Unsqueeze", ["s_b", "bit_axes"], ["off"]),
              make("Cast", ["y_set"], ["y_f"], to=TensorProto.FLOAT),
              make("Where", ["z_set", "on", "off"], ["z_ab"]),
              make("Einsum", ["y_f", "z_ab"], ["w_ab"], equation="rcipxyz,rcjpxyz->ricj")]  # [R, g_r, C, g_c]
    # The c and d terms: v = sum_k c_k (Z_k 1) + d_k per block column, from popcounts of the
    # words (SWAR on uint32: BitShift takes no signed type).
    swar = [("m1", 0x55555555), ("m2", 0x33333333), ("m4", 0x0F0F0F0F), ("m6", 0x3F)]
    nodes += [const(name, u32, [value]) for name, value in swar]
    nodes += [const(f"sh{n}", u32, [n]) for n in (1, 2, 4, 8, 16)]
    nodes += [make("BitShift", ["z_words", "sh1"], ["p1s"], direction="RIGHT"),
              make("BitwiseAnd", ["p1s", "m1"], ["p1a"]),
              make("Sub", ["z_words", "p1a"], ["p1"]),  # 2-bit counts
              make("BitwiseAnd", ["p1", "m2"], ["p2l"]),
              make("BitShift", ["p1", "sh2"], ["p2s"], direction="RIGHT"),
              make("BitwiseAnd", ["p2s", "m2"], ["p2h"]),
              make("Add", ["p2l", "p2h"], ["p2"]),  # 4-bit counts
              make("BitShift", ["p2", "sh4"], ["p4s"], direction="RIGHT"),
              make("Add", ["p2", "p4s"], ["p4a"]),
              make("BitwiseAnd", ["p4a", "m4"], ["p4"]),  # byte counts
              make("BitShift", ["p4", "sh8"], ["p8s"], direction="RIGHT"),
              make("Add", ["p4", "p8s"], ["p8"]),
              make("BitShift", ["p8", "sh16"], ["p16s"], direction="RIGHT"),
              make("Add", ["p8", "p16s"], ["p16"]),
              make("BitwiseAnd", ["p16", "m6"], ["count"]),  # set bits per word, 0..32
              make("Cast", ["count"], ["count_f"], to=TensorProto.FLOAT),
              make("ReduceSum", ["count_f", "ax_last"], ["z_rows"], keepdims=0),  # [R, C, g_c, p]
              make("Mul", ["z_rows", "s_c"], ["cz"]),
              make("ReduceSum", ["cz", "ax_last"], ["v_c"], keepdims=0),  # [R, C, g_c]
              make("ReduceSum", ["s_d", "ax_last"], ["d_sum"], keepdims=0),  # [R, C, 1]
              make("Add", ["v_c", "d_sum"], ["v"]),
              const("ax_one", TensorProto.INT64, [1]),
              make("Unsqueeze", ["v", "ax_one"], ["v4"]),  # [R, 1, C, g_c]
              make("Add", ["w_ab", "v4"], ["blocks"]),
              make("Flatten", ["blocks"], ["w_padded"], axis=2),  # [R*g_r, C*g_c]
              # The slice ends are the node's own attributes, not shapes of run-time tensors:
              # that is what lets the whole body fold into a constant.
              _attribute_constant("m", "out_features"), _attribute_constant("k", "in_features"),
              const("ax_first", TensorProto.INT64, [0]),
              make("Unsqueeze", ["m", "ax_first"], ["m1d"]), make("Unsqueeze", ["k", "ax_first"], ["k1d"]),
              make("Concat", ["m1d", "k1d"], ["w_ends"], axis=0),
              const("w_starts", TensorProto.INT64, [0, 0]),
              make("Slice", ["w_padded", "w_starts", "w_ends"], ["w_hat"])]  # [M, K] float32
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
