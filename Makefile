# kerasserve: `make run` serves the models in models/ (training a default one on first run);
# `make test` runs the whole suite. Both create .venv with the pinned requirements first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
MODELS_DIR ?= models
TESTS ?= tests
# The stamps name a hash of the requirements' contents, not their mtimes: a fresh clone (every file
# new) beside an up-to-date .venv does not reinstall, and a changed pin always does. A clone can
# share an existing virtualenv with `ln -s /path/to/built/.venv .venv` (the tests do).
RUN_STAMP := $(VENV)/.run-installed-$(shell cat requirements.txt | sha256sum | cut -c1-16)
TEST_STAMP := $(VENV)/.test-installed-$(shell cat requirements.txt requirements-dev.txt | sha256sum | cut -c1-16)

.PHONY: run test lint venv bench profile screenshot clean

# The browser tests (tests/e2e/test_console.py) drive Debian's Chromium through its chromedriver; the
# tests never download a browser. Installed here, once, when either file is missing (as root: CI runs
# `make test` as root); otherwise nothing is done, and without them the browser tests skip, saying why.
BROWSER := /usr/bin/chromium /usr/bin/chromedriver

$(RUN_STAMP):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -r requirements.txt
	touch $@

$(TEST_STAMP): $(RUN_STAMP)
	$(PIP) install --quiet -r requirements-dev.txt
	touch $@

venv: $(RUN_STAMP)

run: $(RUN_STAMP)
	MODELS_DIR=$(MODELS_DIR) $(PY) -m service default-model --if-empty
	MODELS_DIR=$(MODELS_DIR) $(VENV)/bin/gunicorn wsgi:app

$(BROWSER) &:
	@if [ "$$(id -u)" = 0 ]; then \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver; \
	else \
		echo "not root: Chromium is not installed, the browser tests will skip (apt-get install -y chromium chromium-driver)"; \
	fi

# Lint and type-check first (seconds), then the suite. `make lint` alone: the same checks.
test: lint $(BROWSER)
	$(PY) -m pytest $(TESTS)

lint: $(TEST_STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# The benchmark (about 30 minutes on 2 cores; needs wrk: apt-get install -y wrk). It rewrites
# docs/benchmarks.{md,json,png}, then gRPC beside REST (about 4 minutes) docs/benchmarks-grpc.md.
# BENCH_ARGS=--quick for a short run (under 4 minutes, every yardstick; about 1 more for gRPC).
bench: $(TEST_STAMP)
	$(PY) bench/benchmark.py $(BENCH_ARGS)
	$(PY) bench/grpc_bench.py --out docs/benchmarks-grpc.md $(BENCH_ARGS)

# Rewrites docs/console.png: the console's screenshot test (which the suite runs into a temporary folder).
screenshot: $(TEST_STAMP) $(BROWSER)
	CONSOLE_SCREENSHOT=docs/console.png $(PY) -m pytest tests/e2e/test_console.py -k screenshot -q

# Where a request's CPU goes: py-spy (requirements-dev.txt; needs ptrace rights, e.g. root) on the
# service's workers under wrk load. PROFILE_ARGS="--model mobilenet" for the other model.
profile: $(TEST_STAMP)
	$(PY) bench/profile.py $(PROFILE_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
