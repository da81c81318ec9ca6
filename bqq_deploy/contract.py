"""The node contracts of the BQQ custom ops, read from the JSON files beside their plugins
(plugins/bqq_matmul/BQQMatMul_contract.json, plugins/bqq_gather/BQQGather_contract.json):
the one place each is written. The package carries them as links beside this file. The
exporter writes these nodes; the runtime reads the portable file's decode nodes."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .layout import FORMAT_VERSION


@dataclass(frozen=True)
class Contract:
    op_type: str
    domain: str
    domain_version: int
    plugin_version: str
    plugin_namespace: str
    int_attributes: tuple[str, ...]  # in the order the plugin lists its fields
    attribute_fields: dict  # attribute -> Layout field key ("M", "K", ...) where it has one
    inputs: tuple[str, ...]
    input_dtypes: dict

    @classmethod
    def load(cls, op_type: str) -> "Contract":
        data = json.loads((Path(__file__).resolve().parent / f"{op_type}_contract.json").read_text())
        if data["op_type"] != op_type or data["format_version"] != FORMAT_VERSION:
            raise ImportError(f"{op_type}_contract.json describes {data['op_type']} for format "
                              f"version {data['format_version']}, expected {op_type} / {FORMAT_VERSION}")
        return cls(op_type, data["onnx_domain"], data["onnx_domain_version"],
                   data["plugin"]["version"], data["plugin"]["namespace"],
                   tuple(a["name"] for a in data["attributes"]),
                   {a["name"]: a["symbol"] for a in data["attributes"] if a["symbol"] is not None},
                   tuple(i["name"] for i in data["inputs"]),
                   {i["name"]: tuple(i["dtypes"]) for i in data["inputs"]})

    @property
    def lookup_attributes(self) -> dict[str, str]:
        """String attributes by which TensorRT's ONNX parser finds the plugin."""
        return {"plugin_version": self.plugin_version, "plugin_namespace": self.plugin_namespace}


MATMUL = Contract.load("BQQMatMul")
# The portable file's model-local function that rebuilds a weight for ONNX Runtime (no plugin:
# docs/ONNX.md section 2); same domain and attributes as the plugin ops.
DECODE_OP = "BQQDecode"
GATHER = Contract.load("BQQGather")
# Both ops live in one ONNX domain and share the layout attributes.
DOMAIN, DOMAIN_VERSION = MATMUL.domain, MATMUL.domain_version
assert (GATHER.domain, GATHER.domain_version, GATHER.int_attributes) == (
    DOMAIN, DOMAIN_VERSION, MATMUL.int_attributes), "BQQ contracts disagree"
