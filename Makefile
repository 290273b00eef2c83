# `make demo` sets everything up (.venv) and runs the built-in demo; `make test` runs the tests.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_DIR ?= runs/demo
# Test workers: the suite is CPU-bound and JAX/TensorFlow start-up dominates small tests.
PYTEST_WORKERS ?= 2

.PHONY: demo test setup setup-test clean

# The demo needs the runtime and the data layer only; the tests add torch (CPU build) and transformers as peers.
setup: $(VENV)/.installed
setup-test: $(VENV)/.test-installed

$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), f"Python >= 3.11 needed, found {sys.version.split()[0]} (set PYTHON=python3.11)"'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[data]"
	@touch $@

$(VENV)/.test-installed: $(VENV)/.installed
	$(PY) -m pip install --quiet "torch==2.13.0" -e ".[test]"
	@touch $@

demo: setup
	@if [ -d "$(DEMO_DIR)" ]; then echo "removing the previous demo run in $(DEMO_DIR)"; rm -rf "$(DEMO_DIR)"; fi
	$(PY) -m sciriff_jax.main --gin_file=gin_configs/runs/demo.gin --gin.MODEL_DIR=\"$(DEMO_DIR)\"

test: setup-test
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) tests

clean:
	rm -rf $(VENV) runs
