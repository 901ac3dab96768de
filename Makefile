# The two commands a newcomer needs:  make run   and   make test
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PORT   ?= 1113

.PHONY: run test lint typecheck unit bench deps venv clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

venv: $(VENV)/.installed

deps:
	bash scripts/install-system-deps.sh

## Run an ident server on 127.0.0.1:$(PORT): kernel lookups, built-in policy (see docs/config.md)
run: venv
	$(BIN)/aioidentd serve --host 127.0.0.1 --port $(PORT) --multiple

lint: venv
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

typecheck: venv
	$(BIN)/mypy --strict src

unit: venv
	$(BIN)/python -m pytest -q

## The whole suite: system peers, lint, types, tests
test: deps lint typecheck unit

bench: venv deps
	$(BIN)/python benchmarks/bench_server.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
