# make repro: set up .venv (once, again when pyproject.toml changes) and run the pipeline.
# make test:  the same setup, then the test suite.
# make check-repro: reproduce and compare with the committed results.
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# dvc runs each stage's `python` from PATH: put the project's environment first.
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: install repro test check-repro

install: $(STAMP)

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

repro: $(STAMP)
	$(BIN)/dvc repro

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest

# Reproduce the pipeline and compare every deterministic metric with the committed results.
check-repro: $(STAMP)
	$(BIN)/python -m seqmtl.check --base HEAD
