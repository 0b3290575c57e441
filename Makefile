# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench lint clean install

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# torch first, pinned exactly: the CPU build is on local disk.
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev,diffusers]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/specdiff demo

test: $(STAMP)
	$(BIN)/python -m pytest

# The longer, timing-based runs (never part of `make test`); each prints a table and writes outputs/.
bench: $(STAMP)
	$(BIN)/python benchmarks/resize_bench.py --repeats 10
	$(BIN)/specdiff testbed --out outputs/testbed
	$(BIN)/specdiff bench --model unet --n 16 --time-batch 8 --deltas 0.01,0.05,0.1 --threads 1 --out outputs/bench-unet
	$(BIN)/specdiff bench --model dit --n 16 --time-batch 8 --deltas 0.01,0.05,0.1 --threads 1 --out outputs/bench-dit

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) outputs .pytest_cache
