# The README's two commands: `make demo` (main job on the bundled model) and `make test`.
# Each sets up what it needs: a virtual environment in .venv and the native build in build/.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# A pinned torch keeps pip from pulling several GB of CUDA wheels on a CPU machine; on a GPU
# machine pass e.g. TORCH_SPEC="torch --index-url <your CUDA wheel index>".
TORCH_SPEC ?= torch==2.13.0
BUILD_DIR ?= build
# CI compiles the CUDA sources for a reduced list; a release build uses the CMake default.
CUDA_ARCHS ?=
JOBS ?= 2

.PHONY: setup native demo test bench clean gpu-check

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[test,demo]"
	touch $@

# cmake comes from PATH or, on a machine without it, from PyPI into the venv. Without any C++
# compiler the native build is skipped (its tests then skip with that reason); with one, a
# failed build fails the command.
native: setup
	@if ! command -v c++ >/dev/null && ! command -v g++ >/dev/null && ! command -v clang++ >/dev/null; then \
	    echo "make native: no C++ compiler found - skipping the native build"; exit 0; fi; \
	cmake=$$(command -v cmake || echo $(VENV)/bin/cmake); \
	[ -x "$$cmake" ] || $(PY) -m pip install -q cmake; \
	"$$cmake" -S . -B $(BUILD_DIR) -DCMAKE_BUILD_TYPE=Release \
	    $(if $(CUDA_ARCHS),-DCMAKE_CUDA_ARCHITECTURES="$(CUDA_ARCHS)") >/dev/null && \
	"$$cmake" --build $(BUILD_DIR) -j $(JOBS)

demo: native
	$(PY) -m bqq_deploy.cli.demo

test: native
	$(PY) -m pytest -q

# CPU benchmarks (tens of minutes on 2 cores); bench/kernel_bench.py needs a GPU.
bench: native
	$(PY) bench/matrix_compression.py && $(PY) bench/quality.py && $(PY) bench/preset_time.py

# A GPU machine without network: its own python3, torch, nvcc and cmake; no venv, no pip.
# Builds the CUDA library for this GPU only, runs the GPU tests, compute-sanitizer, the kernel
# benchmark and a quantiser timing, then prints a summary (tools/gpu_check.sh).
gpu-check:
	tools/gpu_check.sh

clean:
	rm -rf $(BUILD_DIR) $(VENV) out
