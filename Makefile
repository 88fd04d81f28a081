# `make demo` and `make test` do all set-up on a fresh machine (a .venv in the repo).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: test demo bench bench-large lint format clean

# One stamp per set of extras, so `make test` never installs the benchmark peers.
$(VENV)/.stamp-%: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[$(subst +,$(comma),$*)]"
	touch $@

comma := ,

test: $(VENV)/.stamp-test
	$(PY) -m pytest -q -n auto --dist loadgroup

demo: $(VENV)/.stamp-test+notebooks
	$(PY) examples/demo.py

bench: $(VENV)/.stamp-test+bench
	$(PY) benchmarks/run.py
	$(PY) benchmarks/poisson.py
	$(PY) benchmarks/sparse.py

# One large fit, 10^4-10^7 points, against scipy and nlsq. nlsq declares Python >= 3.12
# and a large dependency set; its core runs without them, so it is installed here
# alone (never a dependency of jaxlsq).
bench-large: $(VENV)/.stamp-test+bench
	$(PY) -m pip install --quiet --no-deps --ignore-requires-python nlsq
	$(PY) -m pip install --quiet optax psutil tqdm h5py xxhash pyyaml matplotlib
	$(PY) benchmarks/large.py

lint: $(VENV)/.stamp-test
	$(VENV)/bin/ruff format --check jaxlsq tests benchmarks examples
	$(VENV)/bin/ruff check jaxlsq tests benchmarks examples

format: $(VENV)/.stamp-test
	$(VENV)/bin/ruff format jaxlsq tests benchmarks examples
	$(VENV)/bin/ruff check --fix jaxlsq tests benchmarks examples

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache demo_fits.png
