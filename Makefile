# Two commands for a fresh clone: `make demo` (the main job) and `make test` (the whole suite).
# Each creates or reuses .venv and installs what it needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
SHARED ?= ../shared
DATA   := $(SHARED)/data

.PHONY: demo test test-slow model evaluate anchors bench lint typecheck clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.run: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	touch $@

$(VENV)/.dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[dev,train,service,report,prometheus]'
	touch $@ $(VENV)/.run

demo: $(VENV)/.run
	$(BIN)/atomic-usage demo

test: $(VENV)/.dev
	$(BIN)/python -m pytest -q -m "not slow" --timeout=600

test-slow: $(VENV)/.dev
	$(BIN)/python -m pytest -q -m slow --timeout=1800

# Reproduces the bundled model from the public traces in ../shared/data (at most 15 min on 2 cores).
# Only what precedes UsageBench's cutoffs is read: GCD steps before 240 (the last 4 h cut), NAB all
# but the last 4 days (plus 2 h of margin for gaps); 1 GCD VM in 5, by hash of its name, is held out.
model: $(VENV)/.dev
	$(BIN)/atomic-usage train \
	  --data $(DATA)/gcd2011_vms --holdout-last 4h --holdout-machines yes \
	  --data $(DATA)/nab_aws --holdout-last 4d2h --holdout-machines no \
	  --out src/atomic_usage/models/_default

evaluate: $(VENV)/.run
	$(BIN)/atomic-usage evaluate --dataset gcd --data-dir $(DATA)/gcd2011_vms
	$(BIN)/atomic-usage evaluate --dataset nab --data-dir $(DATA)/nab_aws

# UsageBench's anchors (statsforecast AutoETS/AutoTheta, LightGBM) beside the model and baselines:
# a few minutes on nab, about 10 on gcd (2 cores). Tables and charts go to docs/.
anchors: $(VENV)/.run
	$(BIN)/python -m pip install -q -e '.[bench,report]'
	$(BIN)/atomic-usage evaluate --dataset nab --data-dir $(DATA)/nab_aws --anchors \
	  --markdown docs/anchors-nab.md --chart docs/anchors-nab.png
	$(BIN)/atomic-usage evaluate --dataset gcd --data-dir $(DATA)/gcd2011_vms --anchors \
	  --markdown docs/anchors-gcd.md --chart docs/anchors-gcd.png

bench: $(VENV)/.dev
	$(BIN)/python benchmarks/bench_throughput.py

lint: $(VENV)/.dev
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

typecheck: $(VENV)/.dev
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
