# Two commands for a fresh machine:
#   make example   builds .venv and runs the main example
#   make test      builds .venv and runs the test suite
# PYTHON picks the interpreter, VENV the environment it is installed in, e.g.
#   make test PYTHON="env PYENV_VERSION=3.12.1 python" VENV=.venv-py312
PYTHON ?= python3
VENV ?= .venv
PYTEST_ARGS ?=

.PHONY: example test bench bench-quick clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e ".[test,bench]"
	touch $@

example: $(VENV)/.installed
	$(VENV)/bin/python examples/nnghmc_vs_nutpie.py

test: $(VENV)/.installed
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

# bench: every default target and sampler (< 45 min), the overhead check, figures; writes
# docs/benchmarks.md, docs/benchmarks.json, docs/*.png and benchmarks/results/<stamp>-*.
# bench-quick: the quick targets, short chains (< 5 min); writes benchmarks/results/ only.
bench: $(VENV)/.installed
	$(VENV)/bin/python -m benchmarks --docs docs

bench-quick: $(VENV)/.installed
	$(VENV)/bin/python -m benchmarks --quick

clean:
	rm -rf $(VENV) .venv-py312 build *.egg-info
