# `make run` runs the pipeline, `make test` the tests; both set up .venv first when needed.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
# dvc.yaml's commands call `dcgan`, found here.
export PATH := $(BIN):$(PATH)
export DVC_NO_ANALYTICS := 1
# e.g. make run OVERRIDES="train.epochs=1 data.train_limit=6400": runs as a DVC experiment.
OVERRIDES ?=

.PHONY: setup run test lint clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

run: setup
	dcgan fetch
ifeq ($(strip $(OVERRIDES)),)
	dvc repro
else
	dvc exp run $(addprefix -S ,$(OVERRIDES))
endif

test: lint
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check dcgan flows tests bench
	$(BIN)/ruff format --check dcgan flows tests bench
	$(BIN)/mypy dcgan flows

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
