# Two commands for a newcomer: `make demo` and `make test` (see README.md).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
DEMO := runs/demo

.PHONY: demo test lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch==2.14.1 / torchvision==0.29.1 are pinned in pyproject.toml and come from the local wheel cache.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]'
	touch $@ $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/bintally data index --out $(DEMO)/manifest.parquet
	$(BIN)/bintally data split $(DEMO)/manifest.parquet
	$(BIN)/bintally data check $(DEMO)/manifest.parquet --json $(DEMO)/check.json
	$(BIN)/bintally data report $(DEMO)/manifest.parquet --out $(DEMO)/report

test: $(VENV)/.installed-dev
	$(BIN)/pytest -q

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check bintally tests benchmarks

clean:
	rm -rf $(VENV) runs *.egg-info
