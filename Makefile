# `make test` and `make demo` are the only commands a fresh clone needs: each
# creates .venv and installs what it needs (jax pinned in constraints.txt).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip install --quiet -c constraints.txt

.PHONY: test demo bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.test-deps: pyproject.toml constraints.txt | $(BIN)/python
	$(PIP) -e ".[test,plot]"
	touch $@

$(VENV)/.bench-deps: pyproject.toml constraints.txt $(VENV)/.test-deps
	$(PIP) -e ".[test,plot,bench]"
	touch $@

# Tests run in one process per core (pytest-xdist): JAX compiles single-threaded.
test: $(VENV)/.test-deps
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q -n auto

demo: $(VENV)/.test-deps
	$(BIN)/kalmax twin --model lorenz96 --method etkf --cycles 2000 --seed 0 --plot kalmax_demo.png

bench: $(VENV)/.bench-deps
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
