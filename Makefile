# Two commands for a fresh machine: `make demo` and `make test`.
# Each creates .venv when it is missing and installs kreg with the extras it needs:
# `make demo` the demo's ([demo]), `make test` everything ([all,docs,test]).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.kreg-installed
DEMO_INSTALLED := $(VENV)/.kreg-demo-installed

.PHONY: demo lint test test-fast test-tensorflow test-jax test-torch test-packaging docs bench

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
# the layer, fold, adapt, callbacks and tuning tests run again on JAX and
# PyTorch (tf.distribute tests skip there, marked tensorflow_only). KERAS_BACKEND
# is read once, at import, so each backend is its own pytest run: two of them
# run at once (most tests keep one core busy, and CI has two; their progress
# lines interleave, each run ends with its own summary). The wheel tests
# install into fresh virtual environments, so they have their own target.
test: $(INSTALLED)
	$(MAKE) lint
	$(MAKE) -j2 test-tensorflow test-jax test-torch
	$(MAKE) test-packaging

test-tensorflow: $(INSTALLED)
	KERAS_BACKEND=tensorflow $(PY) -m pytest -q tests --ignore=tests/packaging

test-jax: $(INSTALLED)
	KERAS_BACKEND=jax $(PY) -m pytest -q tests/layers tests/test_keras_compat.py tests/test_fold.py tests/test_adapt.py tests/test_online_adapter.py tests/test_convert.py tests/test_monte_carlo.py tests/callbacks tests/tuning

test-torch: $(INSTALLED)
	KERAS_BACKEND=torch $(PY) -m pytest -q tests/layers tests/test_keras_compat.py tests/test_fold.py tests/test_adapt.py tests/test_online_adapter.py tests/test_convert.py tests/test_monte_carlo.py tests/callbacks tests/tuning

# ruff (configured in pyproject.toml): lint and import order, then the format check.
lint: $(INSTALLED)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# The quick local loop: TensorFlow only, without the tests marked `integration`
# (subprocesses, kills, clusters, whole searches). CI runs `make test`.
test-fast: $(INSTALLED)
	KERAS_BACKEND=tensorflow $(PY) -m pytest -q -m "not integration" tests --ignore=tests/packaging

# The wheel, installed with no extras and with [tensorflow] in fresh venvs.
test-packaging: $(INSTALLED)
	$(PY) -m pytest -q tests/packaging

# The API reference, served at http://127.0.0.1:8000 while it runs.
docs: $(INSTALLED)
	$(VENV)/bin/mkdocs serve

bench: $(INSTALLED)
	$(PY) bench/weight_drop_speed.py
	$(PY) bench/recurrent_regularization.py
