# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv and install into it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install demo test lint format clean

# Reinstalls only when the dependencies change. constraints/cpu.txt keeps torch on its CPU build.
# llama.cpp's AMX kernels segfault on the first decode on virtualised Sapphire/Granite Rapids CPUs (seen on
# these machines; ggml-org/llama.cpp#20824), so llama-cpp-python is compiled for the native CPU minus AMX.
# --no-cache-dir: a wheel pip cached from an earlier build with AMX must not be reused.
LLAMA_CPP_CMAKE_ARGS := -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF \
	-DCMAKE_C_FLAGS='-mno-amx-tile -mno-amx-int8 -mno-amx-bf16' -DCMAKE_CXX_FLAGS='-mno-amx-tile -mno-amx-int8 -mno-amx-bf16'

# Rebuilt only when missing, not the pinned version, or built with AMX.
export LLAMA_CPP_CHECK := import llama_cpp, re, sys; \
	pin = re.search(r"llama-cpp-python==(\S+)", open("constraints/cpu.txt").read()).group(1); \
	sys.exit(llama_cpp.__version__ != pin or "AMX_INT8 = 1" in llama_cpp.llama_print_system_info().decode())

$(STAMP): pyproject.toml constraints/cpu.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "tuneloop needs Python 3.11 or newer")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/python -c "$$LLAMA_CPP_CHECK" 2>/dev/null || CMAKE_ARGS="$(LLAMA_CPP_CMAKE_ARGS)" \
		$(BIN)/pip install --no-cache-dir --force-reinstall --no-deps -c constraints/cpu.txt llama-cpp-python
	$(BIN)/pip install -c constraints/cpu.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

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
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache
