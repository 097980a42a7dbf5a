# gdflow: `make run` and `make test` are all a new user needs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ARGS ?=

.PHONY: run test lint bench clean-venv

run: $(STAMP)  ## run the default comparison (extra options: make run ARGS="--preset tutorial")
	$(BIN)/gdflow run $(ARGS)

test: $(STAMP)  ## run the test suite
	$(BIN)/python -m pytest $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check flows tasks tests benchmarks
	$(BIN)/lint-imports

bench: $(STAMP)  ## training speed against the anchors (ARGS="--quick" for 10^6 rows only)
	$(BIN)/python -c "import sklearn" 2>/dev/null || $(BIN)/python -m pip install --quiet -e ".[bench]"
	$(BIN)/python -m benchmarks.training $(ARGS)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev,dask]"
	touch $(STAMP)

clean-venv:
	rm -rf $(VENV)
