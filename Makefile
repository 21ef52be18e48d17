# `make test` and `make demo` are the only commands a fresh clone needs: each
# creates .venv and installs what it needs (jax pinned in constraints.txt).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip install --quiet -c constraints.txt

.PHONY: test demo bench docs gallery clean

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
	$(BIN)/python -m pytest -q -n auto --dist worksteal

demo: $(VENV)/.test-deps
	$(BIN)/kalmax twin --model lorenz96 --method etkf --cycles 2000 --seed 0 --plot kalmax_demo.png

$(VENV)/.docs-deps: pyproject.toml constraints.txt $(VENV)/.test-deps
	$(PIP) -e ".[test,plot,docs]"
	touch $@

# The documentation site (mkdocs-material + mkdocstrings) into site/; --strict: a broken
# link or reference, or a docstring naming a parameter the signature lacks, fails the build.
docs: $(VENV)/.docs-deps
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

# Remakes the example plots shown on docs/examples.md (a few minutes).
gallery: $(VENV)/.test-deps
	OPENBLAS_NUM_THREADS=1 $(BIN)/python examples/navier_stokes_3dvar.py --out docs/gallery/ns_3dvar.png
	OPENBLAS_NUM_THREADS=1 $(BIN)/python examples/navier_stokes_letkf.py --out docs/gallery/ns_letkf.png
	OPENBLAS_NUM_THREADS=1 $(BIN)/python examples/lorenz63_smoothers.py --out docs/gallery/lorenz63_smoothers.png
	OPENBLAS_NUM_THREADS=1 $(BIN)/python examples/lorenz96_4dvar.py --out docs/gallery/lorenz96_4dvar.png
	OPENBLAS_NUM_THREADS=1 $(BIN)/python examples/butterfly_3dvar.py --out docs/gallery/butterfly_3dvar.png
	OPENBLAS_NUM_THREADS=1 $(BIN)/python examples/tracking_kalman.py --out docs/gallery/tracking.png
	OPENBLAS_NUM_THREADS=1 $(BIN)/python examples/nile_mle.py --out docs/gallery/nile.png
	OPENBLAS_NUM_THREADS=1 $(BIN)/python examples/darcy_inversion.py --out docs/gallery/darcy.png
	OPENBLAS_NUM_THREADS=1 $(BIN)/python examples/learn_lorenz96.py --out docs/gallery/learn_lorenz96.png

bench: $(VENV)/.bench-deps
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) build site *.egg-info .pytest_cache
