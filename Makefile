# clothopt: `make demo` runs the main job on SQLite; `make test` runs the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
DATA ?= data
WEIGHTS ?= imagenet
STORAGE ?= sqlite:///studies/clothopt.db

.PHONY: setup test test-fast lint format clean

$(BIN)/clothopt: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,postgres]'
	@touch $@

setup: $(BIN)/clothopt  ## create .venv and install clothopt with its test tools

test: setup  ## the whole suite (unit + slow tests on a subset of the real data)
	$(PY) -m pytest -q

test-fast: setup  ## unit tests only
	$(PY) -m pytest -q -m "not slow and not postgres"

lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

format: setup
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

clean:
	rm -rf build dist src/*.egg-info .pytest_cache .ruff_cache
