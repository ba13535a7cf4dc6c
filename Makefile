# Set-up and everyday commands. `make serve` and `make test` work on a fresh machine:
# they create .venv, install CPU torch first (pinned by constraints.txt), then the project.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
# Never `python -m` from here: the folder operator/ would shadow the standard library module.
PIP := $(VENV)/bin/pip
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: venv serve test bench clean generate kind-e2e resilience

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(VENV)/bin/python || $(PYTHON) -I -m venv $(VENV)
	$(PIP) install -q -c constraints.txt torch
	$(PIP) install -q -c constraints.txt -e '.[test]'
	# The 8.x Elasticsearch client needs elastic-transport 8: it lives apart, for the client compatibility test.
	$(PIP) install -q --target $(VENV)/es8 'elasticsearch8==8.19.*' >/dev/null 2>&1
	touch $@

# The main job: the embedded server on http://127.0.0.1:9200 with the demo models imported.
serve: venv
	$(VENV)/bin/infernetes serve --demo $(ARGS)

# The whole test suite (CI runs this through .ci/run).
test: venv
	$(VENV)/bin/pytest $(PYTEST_ARGS)

# The benchmark (about 20 minutes): bench/results/benchmark.json and its plots (see README, Benchmarks).
bench: venv
	$(PIP) install -q -c constraints.txt -e '.[bench]'
	$(VENV)/bin/python bench/run.py $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis

# Regenerate what is generated from one source (the tests fail when these are stale).
generate: venv
	$(VENV)/bin/infernetes crd --out-dir crds
	$(VENV)/bin/python scripts/render_deploy.py

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
