# iotsentry: `make demo` and `make test` work on a fresh clone (they create .venv first).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-fast lint bench clean

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.lock
	$(BIN)/pip install -q --no-deps -e .
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/iotsentry demo --out-dir demo-out

test: setup
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy

bench: setup
	$(BIN)/pip install -q -r requirements-bench.txt
	$(BIN)/python benchmarks/bench_read.py
	$(BIN)/python benchmarks/bench_flows.py
	$(BIN)/python benchmarks/bench_analyze.py
	$(BIN)/python benchmarks/bench_serve.py
	$(BIN)/python benchmarks/bench_fleet.py

clean:
	rm -rf $(VENV) demo-out iotsentry-out .pytest_cache .mypy_cache .ruff_cache
