# Feedline developer commands. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: help
help: ## Show this help
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

.PHONY: install
install: $(VENV)/.installed ## Create .venv and install feedline with its dev tools

.PHONY: lint
lint: install ## ruff (lint + format check) and mypy --strict
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy services cronjobs operator tests bench

.PHONY: format
format: install ## Apply ruff's fixes and formatting
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

.PHONY: controlplane
controlplane: ## Build (or reuse) etcd, kube-apiserver, kube-controller-manager and helm
	bash tools/controlplane/build.sh

.PHONY: test-unit
test-unit: install ## Unit tier: pure functions, no I/O
	$(VENV)/bin/pytest -m unit $(PYTEST_ARGS)

.PHONY: test-integration
test-integration: install ## Integration tier: real services, PostgreSQL and SQLite
	$(VENV)/bin/pytest -m integration $(PYTEST_ARGS)

.PHONY: test-cluster
test-cluster: install controlplane ## Cluster tier: a real Kubernetes control plane
	$(VENV)/bin/pytest -m cluster $(PYTEST_ARGS)

.PHONY: bench
bench: install controlplane ## Benchmarks: print throughput and latency figures (see docs/benchmarks.md)
	$(PY) -m bench.bench_subscriber
	$(PY) -m bench.bench_operator

.PHONY: test
test: install lint controlplane ## Everything: lint, every test tier, then the benchmarks
	$(VENV)/bin/pytest -m 'not kind' $(PYTEST_ARGS)
	$(MAKE) --no-print-directory bench
