# Two commands for a fresh clone: `make demo` (the main job) and `make test` (the whole suite).
# Each creates or reuses .venv and installs what it needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
SHARED ?= ../shared
DATA   := $(SHARED)/data

.PHONY: demo test test-slow model evaluate anchors bench bench-service fuzz lint typecheck clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.run: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[service]'
	touch $@

$(VENV)/.dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[dev,train,service,report,prometheus,cluster]'
	touch $@ $(VENV)/.run

demo: $(VENV)/.run
	$(BIN)/atomic-usage demo

test: $(VENV)/.dev
	$(BIN)/python -m pytest -q -m "not slow" --timeout=600

test-slow: $(VENV)/.dev
	$(BIN)/python -m pytest -q -m slow --timeout=1800

# Reproduces the bundled model from the public traces in ../shared/data: the long network (288 steps
# of context, a day ahead) for at most 9 min, then the short one (36 steps, the first hour) for at most
# 4 min (--time-budget, --near-time-budget; each learning-rate schedule follows its budget), so the whole
# job stays within 15 min on 2 cores; on a busy machine it runs fewer steps.
# Only what precedes UsageBench's cutoffs is read: GCD steps before 240 (the last 4 h cut), NAB all
# but the last 4 days (plus 2 h of margin for gaps); 1 GCD VM in 5, by hash of its name, is held out.
# After training, train calibrates the served p10-p90 band on the ends of the same training series
# (about 15 s; `atomic-usage calibrate` with the same --data options redoes only that step).
model: $(VENV)/.dev
	$(BIN)/atomic-usage train \
	  --data $(DATA)/gcd2011_vms --holdout-last 4h --holdout-machines yes \
	  --data $(DATA)/nab_aws --holdout-last 4d2h --holdout-machines no \
	  --steps 4000 --batch-size 256 --seed 0 --time-budget 540 \
	  --near-context 36 --near-steps 4000 --near-time-budget 240 \
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

# Load benchmark of the HTTP service on loopback (bounded: 20 s of load per mode), FULL then NORMAL.
# The load tool is wrk when installed (apt-get install wrk), else an async httpx client.
bench-service: $(VENV)/.dev
	$(BIN)/python benchmarks/bench_service.py --sync FULL --duration 20
	$(BIN)/python benchmarks/bench_service.py --sync NORMAL --duration 20

# The long schemathesis run against a real server's own OpenAPI document (every phase, 300 examples).
FUZZ_PORT ?= 18431
FUZZ_TOKEN := fuzz-token-0123456789abcdef
fuzz: $(VENV)/.dev
	@rm -rf .fuzz-data; mkdir -p .fuzz-data
	@ATOMIC_DATA_DIR=.fuzz-data ATOMIC_API_TOKENS=$(FUZZ_TOKEN) ATOMIC_WORKERS=1 LOG_LEVEL=WARNING \
	  $(BIN)/atomic-usage serve --host 127.0.0.1 --port $(FUZZ_PORT) --model naive & echo $$! > .fuzz-data/pid; \
	  for i in $$(seq 1 100); do curl -sf -H "Authorization: Bearer $(FUZZ_TOKEN)" \
	    http://127.0.0.1:$(FUZZ_PORT)/readyz >/dev/null && break; sleep 0.3; done; \
	  $(BIN)/schemathesis run http://127.0.0.1:$(FUZZ_PORT)/openapi.json -H "Authorization: Bearer $(FUZZ_TOKEN)" \
	    --exclude-checks positive_data_acceptance -n 300; rc=$$?; \
	  kill $$(cat .fuzz-data/pid); rm -rf .fuzz-data; exit $$rc

lint: $(VENV)/.dev
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

typecheck: $(VENV)/.dev
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
