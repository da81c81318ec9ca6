"""A few BQQMatMul and BQQGather calls for compute-sanitizer (memcheck, racecheck): every kernel
family once (the dense cuBLASLt path too, where the library has it),
small shapes so the sanitizer finishes in seconds. Run by tools/gpu_check.sh:
    compute-sanitizer --tool memcheck --error-exitcode 1 python3 bench/sanitizer_cases.py
Exits non-zero when a result is off (the tests check precision; this only catches gross errors)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import random_weight  # noqa: E402  (tests/conftest.py: FORMAT.md-exact weights)

from bqq_deploy import kernels  # noqa: E402
from bqq_deploy.nn import reference_matmul  # noqa: E402


def main() -> int:
    usable, reason = kernels.cuda_status()
    if not usable:
        print(f"sanitizer_cases: {reason}", file=sys.stderr)
        return 2
    weight = random_weight(96, 160, 32, 32, 40, 2, seed=1).to("cuda")  # two words, tails in K
    worst = 0.0
    for portable in (False, True):
        kernels.set_portable(portable)
        for rows, dtype in ((1, torch.float16), (9, torch.float16), (3, torch.float32), (17, torch.float16)):
            x = torch.randn(rows, weight.in_features, device="cuda").to(dtype)
            got = kernels.cuda_matmul(x, weight).float()
            want = reference_matmul(x.float(), weight)
            worst = max(worst, float((got - want).abs().max() / want.abs().max()))
            print(f"portable={portable} rows={rows} {dtype}: {kernels.last_path()}")
    kernels.set_portable(False)
    if kernels.dense_min_rows() is not None:  # built with cuBLASLt: the dense path from 1 row
        previous = kernels.set_dense_min_rows(1)
        x = torch.randn(17, weight.in_features, device="cuda").half()
        got = kernels.cuda_matmul(x, weight).float()
        want = reference_matmul(x.float(), weight)
        worst = max(worst, float((got - want).abs().max() / want.abs().max()))
        print(f"dense rows=17 float16: {kernels.last_path()}")
        kernels.set_dense_min_rows(previous)
    indices = torch.tensor([[0, 95, -1], [40, 7, 63]], device="cuda")
    for dtype in (torch.float32, torch.float16):
        got = kernels.gather_cuda(indices, weight, dtype).float()
        want = weight.dequantize().to(got.device)[indices]
        worst = max(worst, float((got - want).abs().max() / want.abs().max()))
        print(f"gather {dtype}")
    kernels.cuda_dequantize(weight)
    torch.cuda.synchronize()
    print(f"worst relative error {worst:.2e}")
    return 0 if worst < 2e-2 else 1


if __name__ == "__main__":
    sys.exit(main())
