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

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

clean-venv:
	rm -rf $(VENV)
