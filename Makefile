# appetence — two commands on a fresh machine: `make run` and `make test`.
# The interpreter the venv is made from: the distribution's CPython when it is 3.11 or newer
# and can make a venv, else python3 on PATH. Distributions build CPython with PGO and LTO;
# pyenv, for one, builds without unless asked: the worker drained 7-33% more events per
# second, at 9-22% less CPU per event, on Debian's 3.11 than on a plain pyenv 3.11
# (docs/benchmarks-history.md, twenty-first session).
PYTHON ?= $(or $(shell for p in /usr/bin/python3 python3; do \
	$$p -c 'import sys, ensurepip, venv; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1 \
	&& { echo $$p; break; }; done),python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# The slice's numba kernels, compiled into numba's on-disk cache once per change of their
# modules (else the first worker would compile them at start, ~40 s, before it joins).
KERNELS := $(VENV)/.kernels

.PHONY: run test test-faults test-unit test-integration lint typecheck bench schemas clean system-deps

$(STAMP): pyproject.toml
	@echo "making $(VENV) with $(PYTHON) ($$($(PYTHON) -c 'import sys; print(sys.version.split()[0])'))"
	$(PYTHON) -m venv --clear $(VENV) || { rm -rf $(VENV); python3 -m venv $(VENV); }
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# numba's cache notices a change in a kernel's own file only, not in the helpers it inlines
# or calls from the other one (row_kernel's from slate_kernel): both files' caches go first.
$(KERNELS): $(STAMP) processors/slate_kernel.py processors/row_kernel.py
	@echo "compiling the numba kernels (once per change of processors/slate_kernel.py or row_kernel.py, ~30 s)"
	rm -f processors/__pycache__/slate_kernel.*.nb[ic] processors/__pycache__/row_kernel.*.nb[ic]
	$(BIN)/python -c 'from processors.pipeline import compile_kernels; compile_kernels()'
	touch $(KERNELS)

# The slice's modules compiled to C with Cython (stream/compiled.py; 10-27% less CPU per event),
# rebuilt for the modules changed since: ~40 s the first time. A module edited after it runs as
# plain Python until then, and without a C compiler everything does (slower, the same results).
COMPILED := $(VENV)/.compiled
COMPILED_SOURCES := $(wildcard processors/*.py state/*.py)

$(COMPILED): $(KERNELS) stream/compiled.py stream/compiled_hook.py $(COMPILED_SOURCES)
	@$(BIN)/appetence compiled build || echo "compiled modules: not all built; those run as plain Python (after installing a C compiler and python3-dev: .venv/bin/appetence compiled build)"
	touch $(COMPILED)

## Start broker + Redis + worker + simulator on 127.0.0.1 with a live view.
run: $(COMPILED)
	$(BIN)/appetence up --demo

## Lint, type-check, then unit + integration tests (real broker and Redis started by fixtures).
test: $(COMPILED)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/pytest

## The fault suite at full intensity (10 SIGKILLs, 60 s Redis outage, 3 workers); results
## appended to out/faults.jsonl for docs/reliability.md. `make test` runs it at low intensity.
test-faults: $(COMPILED)
	mkdir -p out
	FAULT_INTENSITY=full FAULT_RESULTS=out/faults.jsonl $(BIN)/pytest -m faults -s tests/integration

test-unit: $(COMPILED)
	$(BIN)/pytest tests/unit processors state stream

test-integration: $(COMPILED)
	$(BIN)/pytest tests/integration

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

bench: $(COMPILED)
	$(BIN)/appetence bench

schemas: $(STAMP)
	$(BIN)/appetence schemas export schemas/

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache stream/compiled_modules

## Optional system packages some tests use (they skip cleanly without them): Debian's
## redis-server, prometheus (promtool), chromium + chromium-driver, docker-compose (config check),
## and the Python headers the compiled modules need (stream/compiled.py).
SYSTEM_PACKAGES := redis-server prometheus chromium chromium-driver docker-compose python3-dev
system-deps:
	@missing=""; for cmd in redis-server promtool prometheus chromium chromedriver docker-compose; do \
		command -v $$cmd >/dev/null 2>&1 || missing="$$missing $$cmd"; done; \
	$(PYTHON) -c 'import os, sysconfig, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
		|| missing="$$missing python3-dev"; \
	if [ -z "$$missing" ]; then echo "system packages present"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing:$$missing"; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(SYSTEM_PACKAGES) >/dev/null) \
		|| echo "system packages not installed; their tests will skip"; \
	else echo "missing:$$missing (their tests will skip)"; fi
