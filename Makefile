# kerasserve: `make run` serves the models in models/ (training a default one on first run);
# `make test` runs the whole suite. Both create .venv with the pinned requirements first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
MODELS_DIR ?= models

.PHONY: run test venv bench clean

$(VENV)/.run-installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -r requirements.txt
	touch $@

$(VENV)/.test-installed: $(VENV)/.run-installed requirements-dev.txt
	$(PIP) install --quiet -r requirements-dev.txt
	touch $@

venv: $(VENV)/.run-installed

run: $(VENV)/.run-installed
	MODELS_DIR=$(MODELS_DIR) $(PY) -m service default-model --if-empty
	MODELS_DIR=$(MODELS_DIR) $(VENV)/bin/gunicorn wsgi:app

test: $(VENV)/.test-installed
	$(PY) -m pytest tests

# The benchmark (about 15 minutes on 2 cores; needs wrk: apt-get install -y wrk). It rewrites
# docs/benchmarks.{md,json,png}. BENCH_ARGS=--quick for a short run.
bench: $(VENV)/.test-installed
	$(PY) bench/benchmark.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
