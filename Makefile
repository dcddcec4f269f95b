# Two commands for a fresh machine: `make demo` and `make test`.
# Each creates .venv when it is missing and installs kreg with the extras it needs:
# `make demo` the demo's ([demo]), `make test` everything ([all,docs,test]).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.kreg-installed
DEMO_INSTALLED := $(VENV)/.kreg-demo-installed

.PHONY: demo lint test test-fast test-tensorflow test-tensorflow-core test-tensorflow-layers test-tensorflow-other test-tensorflow-training test-jax test-torch test-packaging docs bench

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(INSTALLED): pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install -q -e ".[all,docs,test]"
	touch $@ $(DEMO_INSTALLED)

$(DEMO_INSTALLED): pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install -q -e ".[demo]"
	touch $@

demo: $(DEMO_INSTALLED)
	$(VENV)/bin/kreg demo

# Everything runs on TensorFlow (the API reference is built strict there too);
# the layer, fold, add_stochastic_depth, adapt, callbacks and tuning tests run again on JAX and
# PyTorch, without the tests marked `integration` (subprocesses, kills,
# clusters, whole searches: process and file orchestration that the TensorFlow
# run covers; tf.distribute tests skip there, marked tensorflow_only).
# KERAS_BACKEND is read once, at import, so each backend is its own pytest run,
# and the TensorFlow run is split in three so that `make -j2` keeps CI's two
# cores busy to the end (most tests keep one core busy; the longest runs start
# first; progress lines interleave, each run ends with its own summary and its
# slowest tests). The JAX run spends most of its time in XLA compiling each
# test's new model once: JAX_DISABLE_MOST_OPTIMIZATIONS (the switch JAX's own
# test suite uses) compiles faster code-unoptimized, about a fifth off the run
# (docs/BENCHMARKS.md). The wheel tests install into fresh virtual
# environments, so they have their own target.
PYTEST := $(PY) -m pytest -q --durations=15
BACKEND_TESTS := tests/layers tests/test_keras_compat.py tests/test_fold.py tests/test_add_stochastic_depth.py tests/test_adapt.py tests/test_online_adapter.py tests/test_convert.py tests/test_monte_carlo.py tests/callbacks tests/tuning

test: $(INSTALLED)
	$(MAKE) lint
	$(MAKE) -j2 test-jax test-tensorflow-training test-tensorflow-other test-tensorflow-layers test-torch
	$(MAKE) test-packaging

test-tensorflow: test-tensorflow-core test-tensorflow-training

test-tensorflow-core: test-tensorflow-layers test-tensorflow-other

test-tensorflow-layers: $(INSTALLED)
	KERAS_BACKEND=tensorflow $(PYTEST) tests/layers

test-tensorflow-other: $(INSTALLED)
	KERAS_BACKEND=tensorflow $(PYTEST) tests --ignore=tests/packaging --ignore=tests/callbacks --ignore=tests/tuning --ignore=tests/layers

test-tensorflow-training: $(INSTALLED)
	KERAS_BACKEND=tensorflow $(PYTEST) tests/callbacks tests/tuning

test-jax: $(INSTALLED)
	JAX_DISABLE_MOST_OPTIMIZATIONS=1 KERAS_BACKEND=jax $(PYTEST) -m "not integration" $(BACKEND_TESTS)

test-torch: $(INSTALLED)
	KERAS_BACKEND=torch $(PYTEST) -m "not integration" $(BACKEND_TESTS)

# ruff (configured in pyproject.toml): lint and import order, then the format check.
lint: $(INSTALLED)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# The quick local loop: TensorFlow only, without the tests marked `integration`
# (subprocesses, kills, clusters, whole searches). CI runs `make test`.
test-fast: $(INSTALLED)
	KERAS_BACKEND=tensorflow $(PYTEST) -m "not integration" tests --ignore=tests/packaging

# The wheel, installed with no extras and with [tensorflow] in fresh venvs.
test-packaging: $(INSTALLED)
	$(PYTEST) tests/packaging

# The API reference, served at http://127.0.0.1:8000 while it runs.
docs: $(INSTALLED)
	$(VENV)/bin/mkdocs serve

bench: $(INSTALLED)
	$(PY) bench/weight_drop_speed.py
	$(PY) bench/recurrent_regularization.py
