# The two README commands: `make run` and `make test`. Both bootstrap .venv on a fresh machine.
# torch is installed first from its pinned CPU build; constraints.txt keeps every later install
# from replacing it with a multi-GB CUDA build.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
VERL_STAMP := $(VENV)/.verl-ref-stamp
# verl's core_algos, the reference the algorithm tests cross-check against (tests/test_zoo_*.py):
# --no-deps, since verl's own pins would replace transformers; then what core_algos imports.
VERL_REF := verl==0.9.1
VERL_REF_DEPS := ray==2.60.0 tensordict==0.15.3 omegaconf==2.4.0 orjson==3.13.0 codetiming==1.4.0 pybind11==3.1.0
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

$(VERL_STAMP): $(STAMP)
	$(PY) -m pip install -q -c constraints.txt --no-deps $(VERL_REF)
	$(PY) -m pip install -q -c constraints.txt $(VERL_REF_DEPS)
	touch $(VERL_STAMP)

run: setup
	bash workflows/scripts/unlock_stale.sh
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(VENV)/bin/snakemake --profile local --cores $(CORES) all --configfile $(CONFIG)

test: setup $(VERL_STAMP)
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
