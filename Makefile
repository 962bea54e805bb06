# retinalab — run `make help` for the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch/torchvision pinned to the wheels this workplace serves from local disk (any torch >= 2.4 works).
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
DEMO_DATA ?= data/demo_idrid
export WANDB_MODE ?= offline
export RETINALAB_CACHE ?= $(CURDIR)/.cache/retinalab

.PHONY: help install demo demo-check test test-slow test-slow-only test-gpu gpu-check bench mutation lint docs docs-serve docker clean

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-10s %s\n", $$1, $$2}'

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH_PINS) -e '.[dev]'
	touch $@

install: $(BIN)/.installed ## create .venv and install retinalab (editable) with its dev tools

demo: install ## synthesise a small IDRiD-layout set, train the ConvNet, the SSL-GAN and FixMatch on one split, print all three
	$(BIN)/python -m retinalab.demo --data $(DEMO_DATA)

demo-check: install ## make demo, then fail unless what the docs say its table shows holds here (CI runs it)
	$(BIN)/python -m retinalab.demo --data $(DEMO_DATA) --check

# two pytest-xdist workers (one torch thread each, tests/conftest.py), one test file per worker at a time
TEST_WORKERS ?= 2
test: install ## run the fast test suite (two workers: < 10 min on 2 cores)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

test-slow: install ## run every test, the slow ones included
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile -m "slow or not slow"

test-slow-only: install ## run only the slow tier (CI runs it after make test)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile -m slow

test-gpu: install ## run the CUDA tests (EGL equals the naive loop on the GPU); they skip without one
	$(BIN)/python -m pytest -q -m gpu -rs

gpu-check: ## on a GPU machine lent for minutes: GPU tests, EGL/inference/paper-000/paper-001 benchmarks on CUDA, results in OUT (the device machine's) or runs/gpu-check
	bash benchmarks/gpu_check.sh

bench: install ## run every benchmark in benchmarks/ (about 3.5 hours on 2 cores) and write benchmarks/RESULTS.md
	$(BIN)/python benchmarks/_report.py

mutation: install ## mutation testing of the papers' arithmetic (mutmut; not in CI, about an hour): kill rate per module, survivors
	$(BIN)/pip install --quiet 'mutmut>=3.3'
	$(BIN)/python tools/mutation.py $(if $(ONLY),--only $(ONLY))

docker: ## build the retinalab image (BASE=<pytorch cuda image> to change the base)
	docker build -f docker/Dockerfile $(if $(BASE),--build-arg BASE=$(BASE)) -t retinalab .

lint: install ## ruff (checks at line length 120, and the format), and the import-linter contract that keeps the package's layers flowing one way (pyproject.toml)
	$(BIN)/ruff check retinalab tests benchmarks tools
	$(BIN)/ruff format --check retinalab tests benchmarks tools
	$(BIN)/lint-imports

$(BIN)/.docs-installed: $(BIN)/.installed
	$(BIN)/pip install --quiet -e '.[docs]'
	touch $@

docs: $(BIN)/.docs-installed ## build the documentation site into site/ (MkDocs + mkdocstrings; any warning is an error)
	$(BIN)/python tools/readme_to_index.py
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

docs-serve: $(BIN)/.docs-installed ## serve the documentation site at http://127.0.0.1:8000 while you edit
	$(BIN)/python tools/readme_to_index.py
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve

clean: ## remove the venv, caches, runs and the built site
	rm -rf $(VENV) .cache runs .pytest_cache .mutation site docs/index.md
