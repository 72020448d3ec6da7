# `make bench` and `make test` set everything up on a machine with only Python 3.11+ and make.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
READY := $(VENV)/.ready

.PHONY: bench test test-slow bench-pytest bench-engine lint clean

$(READY): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,dev,progress,peers]'
	touch $@

bench: $(READY)
	$(BIN)/padata-mp bench --peers

test: $(READY)
	$(BIN)/python -m pytest -q

test-slow: $(READY)
	$(BIN)/python -m pytest -q -m slow || [ $$? -eq 5 ]  # 5: no slow test collected

bench-pytest: $(READY)
	$(BIN)/python -m pytest -q bench --benchmark-enable --benchmark-only

bench-engine: $(READY)
	$(BIN)/python bench/engine_overhead.py

lint: $(READY)
	$(BIN)/ruff check padata_mp tests bench
	$(BIN)/ruff format --check padata_mp tests bench
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .pytest_cache .benchmarks .hypothesis
