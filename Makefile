# Set-up and everyday commands. `make serve` and `make test` work on a fresh machine:
# they create .venv, install CPU torch first (pinned by constraints.txt), then the project.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
# Never `python -m` from here: the folder operator/ would shadow the standard library module.
PIP := $(VENV)/bin/pip
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: venv serve test bench clean generate kind-e2e resilience image

venv: $(VENV)/.installed

# Set-up shows where it is: a line per step with the time since the start, and pip's own output
# (each package it collects and downloads). .venv takes about 2.5 GB once installed.
$(VENV)/.installed: pyproject.toml constraints.txt
	@set -e; start=$$(date +%s); \
	step() { echo "==> [$$(( $$(date +%s) - start )) s] $$*"; }; \
	step "1/4 creating $(VENV) with $(PYTHON)"; \
	test -x $(VENV)/bin/python || $(PYTHON) -I -m venv $(VENV); \
	step "2/4 installing CPU torch (constraints.txt pins the CPU build; the largest download)"; \
	$(PIP) install --progress-bar on -c constraints.txt torch; \
	step "3/4 installing infernetes and its test dependencies (about 150 packages)"; \
	$(PIP) install --progress-bar on -c constraints.txt -e '.[test]'; \
	step "4/4 installing the 8.x Elasticsearch client apart, for the client compatibility test"; \
	$(PIP) install -q --target $(VENV)/es8 'elasticsearch8==8.19.*' >/dev/null 2>&1; \
	touch $@; \
	step "set-up done"

# The main job: the embedded server on http://127.0.0.1:9200 with the demo models imported.
serve: venv
	$(VENV)/bin/infernetes serve --demo $(ARGS)

# The whole test suite (CI runs this through .ci/run), in TEST_WORKERS processes (pytest-xdist), each test file
# in one of them (its module fixtures, a server or a cluster box, start once). Serially the suite keeps one of
# 2 cores busy: its time goes to CPU (imports, model loads, inference), not to waiting.
TEST_WORKERS ?= 2
test: venv
	$(VENV)/bin/pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

# The benchmark (about 25 minutes): bench/results/benchmark.json and its plots, the cluster-overhead figures on
# the cluster box (bench/results/cluster_overhead.json, about 3 minutes), then README's figures rendered
# from them (see README, Benchmarks). The load generator is Debian's wrk, installed here when missing and apt-get
# can (as root); the JSON records which generator ran (aiohttp is the fallback). ARGS go to bench/run.py.
bench: venv
	@command -v wrk >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get install -y wrk || { apt-get update && apt-get install -y wrk; } || echo "wrk not installed: the benchmark falls back to aiohttp"; \
	  else echo "wrk missing and not root: the benchmark falls back to aiohttp (apt-get install wrk)"; fi; }
	$(PIP) install -q -c constraints.txt -e '.[bench]'
	$(VENV)/bin/python bench/run.py $(ARGS)
	@if [ -x /usr/bin/kubectl ]; then $(VENV)/bin/python bench/cluster_overhead.py --profile 10; \
	else echo "kubectl missing: the cluster-overhead benchmark (bench/cluster_overhead.py) is skipped"; fi
	$(VENV)/bin/python bench/readme.py --write

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis

# Regenerate what is generated from one source (the tests fail when these are stale).
generate: venv
	$(VENV)/bin/infernetes crd --out-dir crds
	$(VENV)/bin/python scripts/render_deploy.py

# The container image (operator and worker in one), with docker or podman: `make image`, then for kind
# `kind load docker-image $(IMAGE)`. The default name is the chart's default image, so the chart needs no
# --set image.* for an image built here; to push it elsewhere: make image IMAGE=registry.example.com/infernetes:0.1.0
CHART_VERSION := $(shell sed -n 's/^appVersion: *"*\([^"]*\)"*$$/\1/p' helm/infernetes/Chart.yaml)
IMAGE ?= ghcr.io/infernetes/infernetes:$(CHART_VERSION)
CONTAINER_ENGINE ?= $(shell command -v docker || command -v podman)
image:
	@test -n "$(CONTAINER_ENGINE)" || { echo "make image needs docker or podman (or CONTAINER_ENGINE=...)" >&2; exit 1; }
	$(CONTAINER_ENGINE) build -t $(IMAGE) $(BUILD_ARGS) .
	@echo "built $(IMAGE); for kind: kind load docker-image $(IMAGE)"

# The real-cluster end-to-end test (needs docker, kind, kubectl, helm): see scripts/kind-e2e.sh.
kind-e2e: venv
	scripts/kind-e2e.sh

# The resilience suite alone, writing its figures to bench/results/resilience.json (summarised in README).
resilience: venv
	INFERNETES_RESILIENCE_OUT=bench/results/resilience.json $(VENV)/bin/pytest tests/resilience -q

# A cluster in a box (tests/clusterbox): a Kubernetes API server on 127.0.0.1 for kubectl, no cluster needed.
# Prints the kubeconfig to export; Ctrl-C stops it. Controllers and the kubelet are not part of it yet.
.PHONY: cluster
cluster: venv
	$(VENV)/bin/python tests/clusterbox/__main__.py $(ARGS)
