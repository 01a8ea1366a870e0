# Tollgate: the README's two commands are `make demo` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck unit setup bench clean router-artifact

$(STAMP): pyproject.toml setup.py router_models/_lexical.c
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $(STAMP)

setup: $(STAMP)

## First command: the gateway's main job on embedded defaults (SQLite, no Redis, no network).
demo: $(STAMP)
	$(BIN)/tollgate demo

## Second command: lint, type-check and the whole test suite.
test: $(STAMP) lint typecheck unit

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest -q -p no:cacheprovider

## Refit the shipped router artifact on the five sources, with its held-out and LOSO card.
router-artifact: $(STAMP)
	OMP_NUM_THREADS=2 $(BIN)/tollgate router train --loso --out router_models/artifacts/default

bench: $(STAMP)
	$(BIN)/python bench/overhead.py

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
