# clothopt: `make demo` runs the main job on SQLite; `make test` runs the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
DATA ?= data
WEIGHTS ?= imagenet
STORAGE ?= sqlite:///studies/clothopt.db
# make demo / make bench: the shared data set and MobileNet weights beside the checkout when
# present, unless DATA / WEIGHTS are given; BENCH_ARGS passes more (python -m benchmarks.bench --help)
ifeq ($(origin DATA),file)
RUN_DATA := $(or $(wildcard ../shared/datasets/clothing-dataset-small),$(DATA))
else
RUN_DATA := $(DATA)
endif
ifeq ($(origin WEIGHTS),file)
RUN_WEIGHTS := $(or $(wildcard ../shared/weights/mobilenet_2_5_224_tf_no_top.h5),$(WEIGHTS))
else
RUN_WEIGHTS := $(WEIGHTS)
endif
BENCH_ARGS ?=

.PHONY: setup backends demo test test-fast test-optuna-latest lint format bench clean

$(BIN)/clothopt: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,postgres]'
	@touch $@

setup: $(BIN)/clothopt  ## create .venv and install clothopt with its test tools

# Plain Keras on JAX and on PyTorch, without TensorFlow or clothopt: what a catalogue may serve an
# exported model with (tests/test_backends.py). The same Keras as .venv; torch 2.13.0 is a CPU
# build (a bare `torch` pulls a CUDA build of several GB).
JAX_VERSION ?= 0.10.2
TORCH_VERSION ?= 2.13.0
$(VENV)-%/installed: | $(BIN)/clothopt
	rm -rf $(VENV)-$*
	$(PYTHON) -m venv $(VENV)-$*
	$(VENV)-$*/bin/python -m pip install --quiet --upgrade pip
	$(VENV)-$*/bin/python -m pip install --quiet pillow \
		"keras==$$($(PY) -c 'from importlib.metadata import version; print(version("keras"))')" \
		$(if $(filter jax,$*),"jax==$(JAX_VERSION)","torch==$(TORCH_VERSION)")
	touch $@

backends: $(VENV)-jax/installed $(VENV)-torch/installed  ## .venv-jax, .venv-torch

WIDE ?= 1

demo: setup  ## the main job: the paper's grid and the wide search with mobilenet_025, finalized
	BIN="$(BIN)" DATA="$(RUN_DATA)" WEIGHTS="$(RUN_WEIGHTS)" STORAGE="$(STORAGE)" \
		WIDE="$(WIDE)" bash scripts/demo.sh

test: setup backends  ## the whole suite (unit + slow tests on a subset of the real data)
	CLOTHOPT_BACKEND_PYTHONS="jax=$(VENV)-jax/bin/python torch=$(VENV)-torch/bin/python" \
		$(PY) -m pytest -q

test-fast: setup  ## unit tests only
	$(PY) -m pytest -q -m "not slow and not postgres"

# The tests that exercise Optuna and optuna-dashboard (storage, queue, runner, dashboard,
# studies, and the guard that keeps their private names in engine/optuna_private.py) against
# the newest release of both from the registry, in a venv of their own (CI runs it too).
OPTUNA_TESTS ?= tests/test_imports.py tests/test_study.py tests/test_dashboard.py
LATEST := $(VENV)-optuna-latest
test-optuna-latest:  ## OPTUNA_TESTS against the newest optuna and optuna-dashboard
	rm -rf $(LATEST)
	$(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/python -m pip install --quiet --upgrade pip
	$(LATEST)/bin/python -m pip install --quiet -e '.[dev,postgres]'
	$(LATEST)/bin/python -m pip install --quiet --upgrade optuna optuna-dashboard
	$(LATEST)/bin/python -c 'from importlib.metadata import version as v; \
		print("newest: optuna", v("optuna"), "optuna-dashboard", v("optuna-dashboard"))'
	$(LATEST)/bin/python -m pytest -q -m "not slow" $(OPTUNA_TESTS)

bench: setup  ## search cost, extraction, head training, memory, options -> bench-results/
	$(PY) -m benchmarks.bench --data "$(RUN_DATA)" --weights "$(RUN_WEIGHTS)" \
		--out bench-results $(BENCH_ARGS)

lint: setup
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/ruff format --check src tests benchmarks scripts

format: setup
	$(BIN)/ruff format src tests benchmarks scripts
	$(BIN)/ruff check --fix src tests benchmarks scripts

clean:
	rm -rf build dist src/*.egg-info .pytest_cache .ruff_cache
