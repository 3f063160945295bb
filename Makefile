# Two entry points: `make demo` runs the whole five-step pipeline on the built-in dataset,
# `make test` runs the test suite. Each creates the virtual environment on first use.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test clean-venv

$(VENV)/.runtime: requirements.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	touch $@

$(VENV)/.dev: $(VENV)/.runtime requirements-dev.txt
	$(PY) -m pip install -q --disable-pip-version-check -r requirements-dev.txt
	touch $@

demo: $(VENV)/.runtime
	PYTHON=$(PY) bash scripts/run_pipeline.sh

test: $(VENV)/.dev
	$(PY) -m pytest -q tests

clean-venv:
	rm -rf $(VENV)
