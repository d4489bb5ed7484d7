# tidelog — `make demo` and `make test` build everything they need from scratch.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
UV := $(VENV)/bin/uv
TIDELOG := $(VENV)/bin/tidelog

.PHONY: venv test test-unit test-integration demo lint bench clean stack-up stack-down

$(UV):
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check uv==0.13.9

# uv.lock pins every package; --frozen refuses to run if it is out of date.
venv: $(UV)
	UV_PROJECT_ENVIRONMENT=$(VENV) $(UV) sync --frozen --python $(VENV)/bin/python

test: venv
	$(VENV)/bin/pytest -q -p no:cacheprovider tests

test-unit: venv
	$(VENV)/bin/pytest -q tests/unit

test-integration: venv
	$(VENV)/bin/pytest -q tests/integration

# ruff (style and bugs), mypy (types, clean) and import-linter (the layers in pyproject.toml).
lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports --no-logo

demo: venv
	$(TIDELOG) demo

stack-up: venv
	$(TIDELOG) stack up

stack-down: venv
	$(TIDELOG) stack down

bench: venv
	$(VENV)/bin/python benchmarks/bench_pipeline.py

clean:
	-$(TIDELOG) stack down
	rm -rf $(VENV) .tidelog .pytest_cache
