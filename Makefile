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

.PHONY: setup native demo test bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[test,demo]"
	touch $@

native:
	cmake -S . -B $(BUILD_DIR) -DCMAKE_BUILD_TYPE=Release \
	    $(if $(CUDA_ARCHS),-DCMAKE_CUDA_ARCHITECTURES="$(CUDA_ARCHS)") >/dev/null
	cmake --build $(BUILD_DIR) -j $(JOBS)

demo: setup native
	$(PY) -m bqq_deploy.demo

test: setup native
	$(PY) -m pytest -q

bench: setup native
	$(PY) bench/matrix_compression.py

clean:
	rm -rf $(BUILD_DIR) $(VENV) out
