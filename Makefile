# make repro: set up .venv (once, again when pyproject.toml changes) and run the pipeline.
# make test:  the same setup, then the test suite.
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# dvc runs each stage's `python` from PATH: put the project's environment first.
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: install repro test lint

install: $(STAMP)

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

repro: $(STAMP)
	$(BIN)/dvc repro

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check .
