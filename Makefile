# One set-up path for README, tests and CI: a project venv in .venv.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(abspath $(VENV))/bin
export PATH := $(BIN):$(PATH)
export DVC_NO_ANALYTICS := 1
# pip on some machines warns once per package about a missing local index; hide only that line.
PIP_NOISE := is ignored: it is neither a file nor a directory

.PHONY: setup demo demo-data lint test test-fast docs bench-ingest clean-demo

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip 2> >(grep -v "$(PIP_NOISE)" >&2)
	$(BIN)/pip install --quiet -e '.[dev]' 2> >(grep -v "$(PIP_NOISE)" >&2)
	touch $@

## demo: set up, write the synthetic demo crawl, track it with DVC, run the pipeline
demo: setup demo-data
	dvc repro
	@echo "Open $(abspath reports/index.html) in a browser: every stage's results on one page"

## demo-data: generate missing demo batches and track them (as a team tracks a real crawl batch)
demo-data: setup
	python -m demo.crawl
	dvc add --quiet $$(find data/crawl -mindepth 1 -maxdepth 1 -type d -name 'batch-*' | sort) data/label-exports

## lint: set up, then ruff (lint, format check) and mypy, as pyproject.toml configures them (CI runs it before the tests)
lint: setup
	ruff check .
	ruff format --check .
	mypy

## test: set up and run the test suite (what CI runs)
test: setup
	python -m pytest

## test-fast: the edit-test loop: every test but those marked slow (real dvc repro, Label Studio, torchrun, training runs)
test-fast: setup
	python -m pytest -m "not slow"

## docs: regenerate README's pipeline picture (from `dvc dag`) and docs/reference.md (from the settings); a test checks both
docs: setup
	python docs/generate.py

## bench-ingest: ingest throughput and incremental cost on ../shared/datasets/ccp/photos
bench-ingest: setup
	python benchmarks/bench_ingest.py
