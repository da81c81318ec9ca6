"""The architecture table of docs/ARCHITECTURES.md: the tiny `transformers` models of
tests/test_architectures.py (same configs, inputs and preset), each through
bqq_deploy.export_model, with what the report says and the wall time on this machine.

    python bench/architectures.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch

from matrix_compression import REPO, machine_summary, markdown_table

sys.path.insert(0, str(REPO / "tests"))
from test_architectures import ARCHITECTURES, CONFIG, _dynamic, _inputs, _randomised  # noqa: E402

from bqq_deploy import export_model  # noqa: E402


def main() -> None:
    rows = []
    with tempfile.TemporaryDirectory(prefix="bqq-arch-") as scratch:
        for arch in sorted(ARCHITECTURES):
            make, kind = ARCHITECTURES[arch]
            torch.manual_seed(0)
            model = _randomised(make())
            start = time.perf_counter()
            try:
                report = export_model(model, _inputs(kind, 2, 8, seed=0), Path(scratch) / arch,
                                      config=CONFIG, dynamic_shapes=_dynamic(kind))
            except Exception as exc:  # the table records a failure with its message
                rows.append([arch, type(model).__name__, "-", "-", "-", f"FAILED: {exc}", "-"])
                continue
            seconds = time.perf_counter() - start
            parity = max(o["max_rel"] for o in report.validation["vs_bqq_reference"]["outputs"])
            rows.append([arch, type(model).__name__, len(report.layers), len(report.skipped),
                         f"{report.quantised['bits_per_weight']:.2f}",
                         f"{report.verdict['status']} (parity max rel {parity:.1e})",
                         f"{seconds:.1f}"])
    print(f"Machine: {machine_summary()}\n")
    print(markdown_table(["architecture", "transformers class", "linears quantised",
                          "left in float", "bits/weight", "verdict", "export s"], rows))


if __name__ == "__main__":
    main()
