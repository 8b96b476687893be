# learnrec: `make demo` and `make test` are all a fresh machine needs (Python 3.11 + gcc).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: help install demo test pytest lint format bench serve mlflow-ui clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install learnrec with the tested versions

demo: $(STAMP)  ## run the main job end to end on the embedded defaults
	$(BIN)/learnrec demo

test: lint pytest  ## lint, type-check and run the test suite

pytest: $(STAMP)  ## run the test suite only
	$(BIN)/python -m pytest

lint: $(STAMP)  ## ruff + mypy
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP)  ## apply ruff's fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(STAMP)  ## benchmarks (data generation, training, serving); writes bench/results/
	@command -v wrk >/dev/null || apt-get install -y -qq wrk >/dev/null 2>&1 || \
		echo "make bench: wrk (load generator) missing: sudo apt-get install wrk | brew install wrk"
	$(BIN)/learnrec bench

serve: $(STAMP)  ## run the API on localhost with the embedded Redis
	$(BIN)/learnrec serve

mlflow-ui: $(STAMP)  ## MLflow UI on the project's tracking store
	$(BIN)/learnrec mlflow-ui

clean:  ## remove the virtual environment and the data directory
	rm -rf $(VENV) data .pytest_cache .mypy_cache .ruff_cache
