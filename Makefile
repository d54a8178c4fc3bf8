# Feedline developer commands. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: help
help: ## Show this help
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_-]+:.*## / {printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

.PHONY: install
install: $(VENV)/.installed ## Create .venv and install feedline with its dev tools

.PHONY: lint
lint: install ## ruff (lint + format check), mypy --strict, and the import layers (import-linter)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy contracts services cronjobs operator tests bench
	$(VENV)/bin/lint-imports

CRD_FILES := charts/feedline-operator/crds/eventsubscriptions.feedline.dev.yaml \
	contracts/feedline_contracts/eventsubscription/crd.yaml

.PHONY: crd
crd: install ## Generate the EventSubscription CRD (chart + package copy) from its model
	$(PY) -m feedline_contracts.eventsubscription.crd $(CRD_FILES)

.PHONY: proto
proto: install ## Generate the gRPC feed's Python code (feedline_contracts.feed_v1) from proto/
	$(PY) -m feedline_contracts.feed_v1.generate

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

.PHONY: toxiproxy
toxiproxy: ## Build (or reuse) toxiproxy-server, the faults tier's fault proxy (pinned, go install)
	bash tools/toxiproxy/build.sh >/dev/null

.PHONY: test-faults
test-faults: install toxiproxy ## Faults tier: network faults through a real proxy, each ended by the exactly-once oracle
	$(VENV)/bin/pytest -m faults $(PYTEST_ARGS)

.PHONY: test-cluster
test-cluster: install controlplane ## Cluster tier: a real Kubernetes control plane
	$(VENV)/bin/pytest -m cluster $(PYTEST_ARGS)

FUZZ_EXAMPLES ?= 300
FUZZ_REPORT ?= /tmp/feedline-fuzz-report.txt

.PHONY: fuzz
fuzz: install ## Schemathesis, every check, FUZZ_EXAMPLES (300) examples per operation, SQLite and PostgreSQL
	rm -f $(FUZZ_REPORT)
	@status=0; FEEDLINE_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) FEEDLINE_FUZZ_REPORT=$(FUZZ_REPORT) \
		$(VENV)/bin/pytest -m integration tests/integration/test_api_fuzzing.py $(PYTEST_ARGS) || status=$$?; \
	echo "make fuzz: $(FUZZ_EXAMPLES) examples per operation; runs without issues:"; \
	cat $(FUZZ_REPORT) 2>/dev/null; exit $$status

.PHONY: bench
bench: install controlplane ## Benchmarks: print throughput and latency figures (see docs/benchmarks.md)
	$(PY) -m bench.bench_subscriber --events 200000 --baseline-events 20000 --runs 3
	$(PY) -m bench.bench_transports --events 10000 --latency-samples 10 --interval 0.1
	$(PY) -m bench.bench_operator --count 200 --resync-seconds 10 --resync-periods 1
	$(PY) -m bench.bench_shapes --events 20000 --keys 1000 --only update
	$(PY) -m bench.bench_appends --seconds 0.25 --writers 16
	$(PY) -m bench.bench_feed_size --events 100000 --samples 25
	$(PY) -m bench.bench_fanout --events 20000 --readers 1,10
	$(PY) -m bench.bench_longpoll --followers 100 --floor-rounds 2

BENCH_RESULTS ?= /tmp/feedline-bench-results

.PHONY: bench-full
bench-full: install controlplane ## Every benchmark at full size (10M-event feed too: ~15 min), then one summary table
	@mkdir -p $(BENCH_RESULTS)
	@# Each benchmark's stdout is kept in $(BENCH_RESULTS)/NAME.log for bench.summary;
	@# a failure does not stop the others, and the target fails at the end.
	@status=0; \
	run() { name=$$1; shift; echo "== $$name: $$*"; \
		set -o pipefail; "$$@" | tee $(BENCH_RESULTS)/$$name.log || status=1; }; \
	run subscriber $(PY) -m bench.bench_subscriber --events 200000 --baseline-events 20000 --runs 3; \
	run transports $(PY) -m bench.bench_transports --events 200000 --runs 3 --latency-samples 100 --relay-runs 2; \
	run operator $(PY) -m bench.bench_operator --count 5000 --resync-seconds 60; \
	run shapes $(PY) -m bench.bench_shapes --events 200000 --keys 10000 --runs 3; \
	run appends $(PY) -m bench.bench_appends --seconds 5; \
	run feed_size $(PY) -m bench.bench_feed_size --events 10000000 --samples 200; \
	run fanout $(PY) -m bench.bench_fanout --events 200000 --readers 1,10,50; \
	run longpoll $(PY) -m bench.bench_longpoll --followers 1000; \
	$(PY) -m bench.summary $(BENCH_RESULTS)/{subscriber,transports,operator,shapes,appends,feed_size,fanout,longpoll}.log; \
	exit $$status

.PHONY: test
test: install lint controlplane node-binaries toxiproxy ## Everything: lint, the benchmarks, then every test tier (e2e on a node of its own)
	@# The benchmarks run first and a failure of either does not stop the
	@# other: a run always prints its figures, and pytest's summary closes it.
	@bench_status=0; $(MAKE) --no-print-directory bench || bench_status=$$?; \
	pytest_status=0; $(VENV)/bin/pytest $(PYTEST_ARGS) || pytest_status=$$?; \
	if [ $$bench_status -ne 0 ]; then echo "make test: the benchmarks failed (exit $$bench_status)" >&2; fi; \
	[ $$bench_status -eq 0 ] && [ $$pytest_status -eq 0 ]

# --- Images and kind ---------------------------------------------------------
IMAGE ?= feedline:0.1.0
KIND ?= kind
KIND_CLUSTER ?= feedline
KIND_KUBECONFIG ?= $(HOME)/.kube/kind-$(KIND_CLUSTER)
HELM ?= helm
KUBECTL ?= kubectl
POSTGRES_IMAGE ?= postgres:16-alpine
OPERATOR_NAMESPACE ?= feedline-system
DEMO_NAMESPACE ?= feedline-demo
KIND_HELM = $(HELM) --kubeconfig $(KIND_KUBECONFIG)
KIND_KUBECTL = $(KUBECTL) --kubeconfig $(KIND_KUBECONFIG)

.PHONY: image
image: ## Build the feedline image with docker (IMAGE=feedline:0.1.0)
	docker build --tag $(IMAGE) .

.PHONY: image-local
image-local: ## Build the image with podman on a debootstrap base (no registry needed)
	bash tools/image/build-local.sh --tag $(IMAGE)

.PHONY: test-image
test-image: install ## Image tier: build with podman, run it as a restricted pod would
	$(VENV)/bin/pytest -m image $(PYTEST_ARGS)

.PHONY: kind-up
kind-up: image ## kind cluster from kind-config.yaml, image loaded, operator + demo installed
	$(KIND) get clusters 2>/dev/null | grep -qx '$(KIND_CLUSTER)' \
		|| $(KIND) create cluster --name $(KIND_CLUSTER) --config kind-config.yaml --wait 180s
	mkdir -p $(dir $(KIND_KUBECONFIG))
	$(KIND) get kubeconfig --name $(KIND_CLUSTER) > $(KIND_KUBECONFIG)
	$(KIND) load docker-image $(IMAGE) --name $(KIND_CLUSTER)
	docker image inspect $(POSTGRES_IMAGE) >/dev/null 2>&1 || docker pull $(POSTGRES_IMAGE)
	$(KIND) load docker-image $(POSTGRES_IMAGE) --name $(KIND_CLUSTER)
	for ns in $(OPERATOR_NAMESPACE) $(DEMO_NAMESPACE); do \
		$(KIND_KUBECTL) create namespace $$ns --dry-run=client -o yaml | $(KIND_KUBECTL) apply -f - && \
		$(KIND_KUBECTL) label namespace $$ns --overwrite \
			pod-security.kubernetes.io/enforce=restricted \
			pod-security.kubernetes.io/enforce-version=latest || exit 1; \
	done
	@# The operator watches only the demo's namespace: the cluster tests run
	@# their own operator in their own namespaces on the same cluster.
	$(KIND_HELM) upgrade --install feedline-operator charts/feedline-operator \
		--namespace $(OPERATOR_NAMESPACE) --set image.repository=$(firstword $(subst :, ,$(IMAGE))) \
		--set image.tag=$(lastword $(subst :, ,$(IMAGE))) --set 'watchNamespaces={$(DEMO_NAMESPACE)}' \
		--wait --timeout 5m
	$(KIND_HELM) dependency build charts/feedline-demo
	$(KIND_HELM) upgrade --install feedline-demo charts/feedline-demo \
		--namespace $(DEMO_NAMESPACE) --values charts/feedline-demo/values-kind.yaml \
		--set postgresql.image=$(POSTGRES_IMAGE) --wait --timeout 10m
	@echo "kind-up: ready. export KUBECONFIG=$(KIND_KUBECONFIG); curl localhost:8001/health/ready"

.PHONY: kind-test
kind-test: install ## The cluster and e2e tiers against the kind cluster of kind-up
	FEEDLINE_TEST_KUBECONFIG=$(KIND_KUBECONFIG) $(VENV)/bin/pytest -m 'cluster or e2e' $(PYTEST_ARGS)

.PHONY: kind-down
kind-down: ## Delete the kind cluster
	$(KIND) delete cluster --name $(KIND_CLUSTER)
	rm -f $(KIND_KUBECONFIG)

# --- A real node without Docker (tests/support/node, docs/deployment.md) -----
# One node per machine: kubelet, containerd, kube-proxy, CoreDNS and a registry
# beside the control plane. Needs root and the Debian packages runc,
# containernetworking-plugins, iptables, gcc (+ podman, debootstrap for images).
NODE_POSTGRES_IMAGE ?= localhost/feedline-postgres:15-bookworm

.PHONY: node-binaries
node-binaries: ## Build (or reuse) kubelet, kube-scheduler, kube-proxy, kubectl, containerd, crictl, CoreDNS, registry
	bash tools/controlplane/build.sh --node

.PHONY: node-up
node-up: install controlplane node-binaries ## One-node Kubernetes on this machine, no Docker; prints the kubeconfig path
	$(PY) -m tests.support.node up

.PHONY: node-down
node-down: install ## Stop the node of node-up; fails if it left links, rules, mounts or cgroups
	$(PY) -m tests.support.node down

.PHONY: images
images: install ## Build the feedline and PostgreSQL images with podman, push them to the node's registry
	bash tools/image/build-local.sh --tag $(IMAGE)
	bash tools/image/build-postgres.sh --tag $(NODE_POSTGRES_IMAGE)
	$(PY) -m tests.support.node push localhost/$(IMAGE) $(IMAGE)
	$(PY) -m tests.support.node push $(NODE_POSTGRES_IMAGE) $(NODE_POSTGRES_IMAGE)

.PHONY: e2e
e2e: node-up images ## The e2e tier on the node (charts installed with helm); the node stays up: make node-down
	FEEDLINE_E2E_IMAGES_PUSHED=1 $(VENV)/bin/pytest -m e2e tests/e2e $(PYTEST_ARGS)
