# `make test` and `make demo` do all set-up on a fresh machine (a .venv in the repo).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test demo bench lint format clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test,bench]"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

demo: $(STAMP)
	$(PY) examples/demo.py

bench: $(STAMP)
	$(PY) benchmarks/run.py

lint: $(STAMP)
	$(VENV)/bin/ruff format --check jaxlsq tests benchmarks examples
	$(VENV)/bin/ruff check jaxlsq tests benchmarks examples

format: $(STAMP)
	$(VENV)/bin/ruff format jaxlsq tests benchmarks examples
	$(VENV)/bin/ruff check --fix jaxlsq tests benchmarks examples

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
