"""One fact, one home, checked across languages: the BQQMatMul contract file against the
plugin's C++ constants and the exporter, and the Python Layout against the C++ layout code
(element counts, field limits, status codes, format version)."""

from __future__ import annotations

import ctypes
import json
import re
from pathlib import Path

import pytest
import torch

from bqq_deploy import kernels
from bqq_deploy import contract
from bqq_deploy.export.function import node_attributes
from bqq_deploy.layout import FORMAT_VERSION, Layout

REPO = Path(__file__).resolve().parents[1]
PLUGIN_DIR = REPO / "plugins" / "bqq_matmul"
CONTRACT = json.loads((PLUGIN_DIR / "BQQMatMul_contract.json").read_text())
MATMUL = contract.MATMUL


def _cpp_string_constant(source: str, name: str) -> str:
    match = re.search(rf'constexpr char const\* {name} = "([^"]*)";', source)
    assert match, f"{name} not found"
    return match.group(1)


def test_the_package_reads_the_contract_beside_the_plugin():
    for op in ("BQQMatMul", "BQQGather"):
        packaged = Path(contract.__file__).with_name(f"{op}_contract.json")
        assert packaged.resolve() == (REPO / "plugins" / op.lower().replace("bqq", "bqq_")
                                      / f"{op}_contract.json")  # a link, not a copy that can drift


@pytest.mark.parametrize("header,op", [("bqq_matmul/BQQMatMulPlugin.h", contract.MATMUL),
                                       ("bqq_gather/BQQGatherPlugin.h", contract.GATHER)])
def test_plugin_constants_match_the_contract(header, op):
    source = (REPO / "plugins" / header).read_text()
    assert _cpp_string_constant(source, "kPluginName") == op.op_type
    assert _cpp_string_constant(source, "kPluginVersion") == op.plugin_version
    assert _cpp_string_constant(source, "kPluginNamespace") == op.plugin_namespace
    # The creator lists exactly these fields, in this order; the parser drops any attribute
    # the creator does not list, so a renamed attribute would silently vanish.
    block = re.search(r"kFieldNames\{(.*?)\};", source, re.S)
    assert block, "kFieldNames not found"
    assert tuple(re.findall(r'"([a-z_]+)"', block.group(1))) == op.int_attributes


def test_exporter_writes_the_contract_attributes_in_order(make_weight):
    weight = make_weight(70, 100, 32, 16, 24, 2)
    attrs = node_attributes(weight, MATMUL)
    assert tuple(attrs)[:len(MATMUL.int_attributes)] == MATMUL.int_attributes
    assert attrs == {"out_features": 70, "in_features": 100, "group_rows": 32, "group_cols": 16,
                     "rank": 24, "stacks": 2, "format_version": FORMAT_VERSION,
                     "plugin_version": "1", "plugin_namespace": "bqq"}
    assert MATMUL.inputs == ("X", "y_bits", "z_bits", "scales", "bias")
    assert MATMUL.input_dtypes["y_bits"] == MATMUL.input_dtypes["z_bits"] == ("int32",)


@pytest.fixture(scope="module")
def ref_lib():
    try:
        return kernels.ref_library()
    except kernels.LibraryNotFound as exc:
        pytest.skip(str(exc))


LAYOUTS = [Layout(70, 100, 32, 48, 40, 3), Layout(1, 1, 1, 1, 1, 1), Layout(4096, 11008, 64, 64, 32, 2),
           Layout(33, 4097, 4096, 7, 4096, 16), Layout(2**31 - 1, 3, 4096, 4096, 33, 1)]


@pytest.mark.parametrize("layout", LAYOUTS, ids=str)
def test_cpp_element_counts_equal_the_python_layout(ref_lib, layout):
    c_layout = kernels._Layout(*layout.fields.values())
    shapes = layout.shapes()
    assert ref_lib.bqq_layout_check(ctypes.byref(c_layout)) == kernels.BQQ_OK
    assert ref_lib.bqq_y_bits_words(ctypes.byref(c_layout)) == torch.Size(shapes["y_bits"]).numel()
    assert ref_lib.bqq_z_bits_words(ctypes.byref(c_layout)) == torch.Size(shapes["z_bits"]).numel()
    assert ref_lib.bqq_scale_count(ctypes.byref(c_layout)) == torch.Size(shapes["scales"]).numel()


@pytest.mark.parametrize("fields,ok", [
    ((2**31 - 1, 2**31 - 1, 1, 1, 32, 1), False),  # 2^62 words in y_bits
    ((2**31 - 1, 2**31 - 1, 64, 64, 32, 16), False),  # 2^60
    ((2**31 - 1, 2**31 - 1, 64, 64, 32, 4), True),  # 2^58
    ((2**31 - 1, 2**31 - 1, 4096, 4096, 32, 1), True)])
def test_cpp_and_python_agree_on_the_tensor_size_limit(ref_lib, fields, ok):
    # Fields in range can still give packed tensors whose element counts overflow int64.
    c_status = ref_lib.bqq_layout_check(ctypes.byref(kernels._Layout(*fields)))
    try:
        Layout.checked(dict(zip(Layout.KEYS, fields)))
        py_ok = True
    except ValueError:
        py_ok = False
    assert py_ok == ok and (c_status == kernels.BQQ_OK) == ok


@pytest.mark.parametrize("key", Layout.KEYS)
def test_cpp_field_limits_equal_the_python_limits(ref_lib, key):
    base = Layout(64, 64, 64, 64, 32, 2).fields
    for value, ok in ((1, True), (Layout.LIMITS[key], True), (0, False),
                      (Layout.LIMITS[key] + 1, False)):
        if value > 2**31 - 1:
            continue  # int32 fields: M and K cannot exceed their limit in C at all
        fields = {**base, key: value}
        c_status = ref_lib.bqq_layout_check(ctypes.byref(kernels._Layout(*fields.values())))
        py_ok = True
        try:
            Layout.checked(fields)
        except ValueError:
            py_ok = False
        assert py_ok == ok and (c_status == kernels.BQQ_OK) == ok, (key, value)
        if not ok:
            assert c_status == kernels.BQQ_ERR_INVALID_ARGUMENT


def test_status_codes_and_format_version_match_the_c_header():
    header = (PLUGIN_DIR / "bqq_matmul.h").read_text()
    codes = dict((name, int(value)) for name, value in re.findall(r"(BQQ_(?:OK|ERR_\w+)) = (\d+)", header))
    assert codes == {name: getattr(kernels, name) for name in codes}
    assert set(codes) >= {"BQQ_OK", "BQQ_ERR_INVALID_ARGUMENT", "BQQ_ERR_CUDA", "BQQ_ERR_UNSUPPORTED_ARCH"}
    version = re.search(r"#define BQQ_FORMAT_VERSION (\d+)", header)
    assert version and int(version.group(1)) == FORMAT_VERSION == CONTRACT["format_version"]
