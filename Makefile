# Two set-up-free commands: `make demo` (the main job) and `make test` (the test suite).
# Each creates .venv when it is missing: the CPU torch wheel first, then the package with its dev extra.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench-quick clean-venv

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m lightning_recsys.demo

test: $(STAMP)
	$(PY) -m pytest -q tests

bench-quick: $(STAMP)
	for b in benchmarks/[a-z]*.py; do $(PY) $$b --quick || exit 1; done

clean-venv:
	rm -rf $(VENV)
