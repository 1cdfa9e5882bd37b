# streamclust: set-up and everyday commands.  Needs only python3.11, pip and make.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO_ROWS ?= 20000
DEMO_OUT  ?= demo-out

.PHONY: demo lint test test-slow bench clean-demo

$(STAMP): pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found; install Python 3.11 or run 'make PYTHON=/path/to/python3.11 ...'" >&2; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[test]"
	@echo "compiling the numba kernels of the kNN index and of UMAP once (cached on disk for later runs)..."
	$(BIN)/python -c "from streamclust.estimators import warm_up, warm_up_umap; warm_up(verbose=True); warm_up_umap(verbose=True)"
	touch $(STAMP)

## demo: build the demo case (DEMO_ROWS rows), convert it to Zarr and run the study into DEMO_OUT/
demo: $(STAMP)
	$(BIN)/streamclust demo --rows $(DEMO_ROWS) --out $(DEMO_OUT)

## lint: ruff over the repository, mypy over core/ and io/ (configured in pyproject.toml)
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

## test: lint, then the full default test suite (what CI runs)
test: lint
	$(BIN)/python -m pytest -q -m "not slow"

## test-slow: only the long tests excluded from `make test`
test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

## bench: the benchmark suite (see benchmarks/README.md)
bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[test,bench]"
	$(BIN)/python benchmarks/run.py all

clean-demo:
	rm -rf $(DEMO_OUT)
