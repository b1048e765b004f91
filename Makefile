# The two README commands: `make run` and `make test`. Both bootstrap .venv on a fresh machine.
# torch is installed first from its pinned CPU build; constraints.txt keeps every later install
# from replacing it with a multi-GB CUDA build.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
CORES  ?= $(shell nproc)
CONFIG ?= config/default.yaml

export WANDB_MODE ?= offline
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/.cache/torch_extensions

.PHONY: setup run test lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$$(cat constraints.txt | grep '^torch==')"
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

run: setup
	bash workflows/scripts/unlock_stale.sh
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(VENV)/bin/snakemake --profile local --cores $(CORES) all --configfile $(CONFIG)

test: setup
	$(PY) -m pytest -q

bench: setup
	$(PY) -m pip install -q -c constraints.txt -e '.[dev,bench]'
	$(VENV)/bin/rlvr bench

lint: setup
	$(PY) -m ruff check .
	$(VENV)/bin/lint-imports
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(VENV)/bin/snakemake --lint

clean:
	rm -rf runs data .snakemake
