#!/usr/bin/env bash
# make gpu-check: everything GPU-only of docs/KERNELS.md in one command, for a GPU machine
# WITHOUT network: no venv, no pip; the machine's python3 (torch with CUDA, pytest), nvcc,
# cmake. Builds only the CPU reference and the CUDA library, for this machine's GPU
# architecture, in build/gpu-check/. Every step runs even if an earlier one failed; each step's
# log lands in bench/results/gpu-check/ and, when $OUT is set, a copy of the logs and the
# benchmark result in $OUT. Ends with a summary; exit status 1 if any step failed.
#
# Steps: env, build, isa (SASS instruction counts per packed byte), tests (pytest -m gpu:
# BQQMatMul paths, BQQGather, dequantize), memcheck + racecheck (compute-sanitizer on
# bench/sanitizer_cases.py), bench (bench/kernel_bench.py -> bench/results/<gpu>.md, with the
# measured dense-path crossover next to the compiled kDenseMinRows), quantize (seconds per
# million weights per preset with BQQConfig(device="cuda"), bench/throughput.py; with several
# GPUs also 1 process against torchrun over all of them). Aimed at < 10 minutes on an H200.
#
# Variables: PYTHON (default python3), GPU_CHECK_ARCH (e.g. 90; default: the GPU's compute
# capability; on a machine without GPU the build and isa steps use 80 as a rehearsal),
# JOBS (default: number of CPUs).
set -uo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
py=${PYTHON:-python3}
logs=bench/results/gpu-check
build=build/gpu-check  # inside the ignored build/: never travels or gets committed
mkdir -p "$logs"
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 BQQ_LIB_DIR="$repo/$build/plugins/bqq_matmul"
jobs=${JOBS:-$(nproc 2>/dev/null || echo 4)}
declare -a names=() results=()
start_all=$(date +%s)

step() {  # step NAME TIMEOUT_S COMMAND...: run, log, record; never stops the script
    local name=$1 limit=$2
    shift 2
    local t0=$(date +%s)
    echo "== $name: $*"
    timeout --kill-after=10 "$limit" "$@" >"$logs/$name.log" 2>&1
    local rc=$?
    tail -n 15 "$logs/$name.log"
    local status=ok
    if [[ $rc -eq 124 || $rc -eq 137 ]]; then status="TIMEOUT after ${limit}s"; elif [[ $rc -ne 0 ]]; then status="FAILED (exit $rc)"; fi
    names+=("$name")
    results+=("$status, $(( $(date +%s) - t0 ))s")
    echo "== $name: $status"
}

gpu_arch=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d '.[:space:]')
have_gpu=0
[[ -n "$gpu_arch" ]] && have_gpu=1
arch=${GPU_CHECK_ARCH:-${gpu_arch:-80}}
need_gpu() { [[ $have_gpu -eq 1 ]] || { echo "no NVIDIA GPU here (nvidia-smi finds none): this step needs one"; return 3; }; }

step env 60 bash -c "nvidia-smi || true; command -v nvcc && nvcc --version | tail -2; cmake --version | head -1;
  $py -c 'import torch, sys; print(\"python\", sys.version.split()[0], \"torch\", torch.__version__, \"cuda\", torch.version.cuda, \"gpu\", torch.cuda.is_available() and torch.cuda.get_device_name(0))'
  echo build architecture: sm_$arch"

# cuBLASLt (dense large-batch path): the toolkit's, else the one torch's CUDA wheels bring
# (site-packages/nvidia/cu13 or nvidia/cublas), passed as BQQ_CUBLAS_ROOT.
cublas_root=$($py - <<'PY' 2>/dev/null
import os
try:
    import nvidia
except ImportError:
    raise SystemExit
for base in nvidia.__path__:
    for sub in ("cu13", "cublas"):
        if os.path.isfile(os.path.join(base, sub, "include", "cublasLt.h")):
            print(os.path.join(base, sub))
            raise SystemExit
PY
)
step build 300 bash -c "cmake -S . -B $build -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=$arch \
  -DBQQ_BUILD_TENSORRT=OFF -DBQQ_CUBLAS_ROOT='$cublas_root' | grep -E 'bqq:' ; \
  cmake --build $build --target bqq_matmul_ref bqq_matmul_cuda -j $jobs"

# SASS of the built library where cuobjdump exists, else PTX of the kernel sources.
step isa 120 bash -c "set -e; lib=$build/plugins/bqq_matmul/libbqq_matmul_cuda.so
  if command -v cuobjdump >/dev/null; then cuobjdump -sass \$lib > $logs/kernels.sass; src=$logs/kernels.sass
  else echo 'cuobjdump not found: counting PTX instead'; for f in bqq_decode bqq_gemv; do
    nvcc -ptx -O3 -std=c++17 -arch=sm_$arch -Iplugins/bqq_matmul plugins/bqq_matmul/\$f.cu -o $logs/\$f.ptx; done
    cat $logs/bqq_decode.ptx $logs/bqq_gemv.ptx > $logs/kernels.ptx; src=$logs/kernels.ptx; fi
  $py bench/isa_count.py \$src --budget --markdown | tee $logs/isa.md"

step tests 300 bash -c "need_gpu() { [[ $have_gpu -eq 1 ]] || { echo 'no NVIDIA GPU here: pytest -m gpu would only skip'; exit 3; }; }; need_gpu
  $py -m pytest -q -m gpu -p no:cacheprovider tests/test_kernels_gpu.py -rs"

for tool in memcheck racecheck; do
    step "$tool" 180 bash -c "[[ $have_gpu -eq 1 ]] || { echo 'no NVIDIA GPU here: compute-sanitizer needs one'; exit 3; }
      compute-sanitizer --tool $tool --error-exitcode 1 $py bench/sanitizer_cases.py"
done

step bench 300 bash -c "[[ $have_gpu -eq 1 ]] || { echo 'no NVIDIA GPU here: the benchmark needs one'; exit 3; }
  $py bench/kernel_bench.py --runs 50"

# Seconds per million weights per preset on the GPU, and with several GPUs the scaling from
# one process to one per GPU (torchrun); both append to bench/results/throughput.md.
step quantize 420 bash -c "[[ $have_gpu -eq 1 ]] || { echo 'no NVIDIA GPU here: this times the quantiser on a GPU'; exit 3; }
  set -o pipefail; $py bench/throughput.py presets --device cuda --shared no | tee $logs/quantize.md
  gpus=\$(nvidia-smi -L | wc -l); if [[ \$gpus -gt 1 ]]; then
    $py bench/throughput.py scaling --device cuda --preset balanced --shared no | tee -a $logs/quantize.md
  else echo 'one GPU: no torchrun scaling to measure'; fi"

echo
echo "================ gpu-check summary ($(( $(date +%s) - start_all ))s, sm_$arch) ================"
failed=0
for k in "${!names[@]}"; do
    printf '%-10s %s\n' "${names[$k]}" "${results[$k]}"
    [[ ${results[$k]} == ok* ]] || failed=1
done
echo "-- instruction counts (warp-instructions per packed byte; budget H200 ~0.22, Orin ~0.4):"
grep -E "per block and stack|portable (t|y)-phase, 1 row" "$logs/isa.md" 2>/dev/null | head -8
echo "-- benchmark (4096x4096, us; speed-up = cuBLAS fp16 / BQQ):"
grep -hE "^\| 4096 \| 4096 \| [23] \| (1|16|4096) \|" bench/results/*.md 2>/dev/null | head -6
echo "-- dense path (W_hat + cuBLASLt) threshold, measured vs compiled (kDenseMinRows, bqq_launch.cu):"
grep -h "measured crossover\|without cuBLASLt\|cuBLASLt not found\|dense large-batch path" "$logs/bench.log" "$logs/build.log" 2>/dev/null | head -4
echo "-- quantiser:"
grep -E "^\| (fast|balanced|best|1 process|torchrun)" "$logs/quantize.md" 2>/dev/null | sort -u
echo "-- tests:"
tail -n 1 "$logs/tests.log" 2>/dev/null

if [[ -n "${OUT:-}" && -d "${OUT:-}" ]]; then  # at most 8 files come back: pack the logs
    tar -czf "$OUT/gpu-check-logs.tar.gz" -C bench/results gpu-check 2>/dev/null
    cp bench/results/*.md "$OUT/" 2>/dev/null
    echo "copied logs and results to \$OUT"
fi
exit $failed
