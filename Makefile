# avatar-cluster: `make run` and `make test` set everything up from nothing.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export RAY_AUTH_MODE := disabled

.PHONY: install run test test-unit test-all bench lint fmt clean help fuzz

help:  ## Show the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

install: $(STAMP)  ## Create .venv and install everything (apt + pip), idempotently

$(STAMP): pyproject.toml scripts/install.sh
	PYTHON=$(PYTHON) bash scripts/install.sh
	touch $(STAMP)

run: install  ## Start the avatar cluster on http://127.0.0.1:8000 (Ctrl-C stops it)
	$(BIN)/avatarctl serve --config local

test: install  ## Run unit, integration and browser tests (GPU tests need a GPU: make test-all)
	$(BIN)/pytest -m "not gpu" -q

test-all: install  ## Every test category that this machine can run
	$(BIN)/pytest -q

bench: install  ## Benchmarks (pipeline, serve, e2e); JSON results in out/bench/
	mkdir -p out/bench
	$(BIN)/avatarctl bench pipeline --json --out out/bench/pipeline.json
	$(BIN)/avatarctl bench serve --json --out out/bench/serve.json
	$(BIN)/avatarctl bench e2e --serve --json --out out/bench/e2e.json

fuzz: install  ## atheris: 100,000 inputs per input edge, one after another; JSON in out/fuzz/
	$(BIN)/python scripts/fuzz.py --target all --runs 100000

lint: install  ## ruff
	$(BIN)/ruff check .

clean:  ## Remove the virtualenv and local data
	rm -rf $(VENV) .data out
