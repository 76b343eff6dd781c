# Everyday commands; each is the README's command or a part of CI.
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup run test lint format bench

$(BIN)/agentdb:
	python3 -m venv $(VENV) && $(BIN)/pip install -q -e '.[test]'

setup: $(BIN)/agentdb

run: setup
	$(BIN)/agentdb serve

test: setup
	$(BIN)/pytest

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: setup
	$(BIN)/python benchmarks/localplane.py
	$(BIN)/python benchmarks/api.py
	$(BIN)/python benchmarks/tiers.py
