"""The BQQMatMul node contract, read from plugins/bqq_matmul/BQQMatMul_contract.json (the
one place it is written; the package carries it as BQQMatMul_contract.json beside this
file). Names, attribute order, input order and dtypes of the node the exporter writes."""

from __future__ import annotations

import json
from pathlib import Path

from ..layout import FORMAT_VERSION

_CONTRACT = json.loads((Path(__file__).resolve().parent / "BQQMatMul_contract.json").read_text())

OP_TYPE: str = _CONTRACT["op_type"]
DOMAIN: str = _CONTRACT["onnx_domain"]
DOMAIN_VERSION: int = _CONTRACT["onnx_domain_version"]
PLUGIN_VERSION: str = _CONTRACT["plugin"]["version"]
PLUGIN_NAMESPACE: str = _CONTRACT["plugin"]["namespace"]
# INT attributes of every BQQMatMul node, in the order the plugin lists its fields.
INT_ATTRIBUTES: tuple[str, ...] = tuple(a["name"] for a in _CONTRACT["attributes"])
# Layout field (bqq_deploy.layout.Layout attribute) behind each attribute that has one.
ATTRIBUTE_FIELDS: dict[str, str] = {
    a["name"]: a["symbol"] for a in _CONTRACT["attributes"] if a["symbol"] is not None}
INPUTS: tuple[str, ...] = tuple(i["name"] for i in _CONTRACT["inputs"])
INPUT_DTYPES: dict[str, tuple[str, ...]] = {i["name"]: tuple(i["dtypes"]) for i in _CONTRACT["inputs"]}
# String attributes by which TensorRT's ONNX parser finds the plugin.
LOOKUP_ATTRIBUTES: dict[str, str] = {"plugin_version": PLUGIN_VERSION,
                                     "plugin_namespace": PLUGIN_NAMESPACE}

if _CONTRACT["format_version"] != FORMAT_VERSION:
    raise ImportError(f"BQQMatMul_contract.json is for format version {_CONTRACT['format_version']}, "
                      f"this package writes version {FORMAT_VERSION}")
