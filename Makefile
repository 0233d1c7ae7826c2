# Two commands on a fresh machine: `make repro` and `make test`. Set-up is idempotent: the venv is
# rebuilt only when pyproject.toml changes, so a second `make setup` takes seconds.
PYTHON ?= python3.11
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed
NPM_STAMP := node_modules/.installed
PLOTS_TEMPLATE := .dvc/plots_template.html
MIRROR := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
UI_PORT ?= 5000
export PATH := $(BIN):$(PATH)
SHELL := /bin/bash
# pip warns about every local index folder that lacks a package; those lines are noise.
QUIET_PIP := 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)

.PHONY: setup repro test ui lint clean

setup: $(STAMP) mirror .dvc/config $(PLOTS_TEMPLATE)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip $(QUIET_PIP)
	$(BIN)/python -m pip install --quiet -e '.[dev]' $(QUIET_PIP)
	touch $(STAMP)

# Debian ships the Fashion-MNIST files torchvision downloads; install them as an offline mirror when
# they are missing and apt-get can be used. Without them, `pull` downloads from torchvision's mirrors.
.PHONY: mirror
mirror:
	@if [ ! -f $(MIRROR) ] && command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || \
		{ apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1; } || \
		echo "note: could not install dataset-fashion-mnist; pull will download"; \
	fi

# A fresh clone has .dvc/ committed; this only covers a checkout whose .dvc/ was removed.
.dvc/config:
	DVC_NO_ANALYTICS=1 $(BIN)/dvc init --quiet && $(BIN)/dvc config core.analytics false
	$(BIN)/dvc config plots.html_template $(notdir $(PLOTS_TEMPLATE))

# `dvc plots show` draws with vega, vega-lite and vega-embed, which DVC's page loads from a CDN. Set-up installs the
# versions package-lock.json pins and inlines them into the page template that .dvc/config names
# (plots.html_template), so the charts draw offline. npm runs again only when package*.json change. Without npm
# the template keeps DVC's CDN scripts, so plots work as in plain DVC (online); it is remade, and the note said, on
# every set-up until npm is installed.
ifneq ($(shell command -v npm),)
$(NPM_STAMP): package.json package-lock.json
	npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
	touch $@

$(PLOTS_TEMPLATE): $(NPM_STAMP) tools/dvc_plots_template.py | $(STAMP) .dvc/config
	$(BIN)/python tools/dvc_plots_template.py $@
else
.PHONY: $(PLOTS_TEMPLATE)
$(PLOTS_TEMPLATE): | $(STAMP) .dvc/config
	@echo "note: npm not found; dvc plots show loads vega from its CDN, online only (make setup again with npm)"
	@$(BIN)/python tools/dvc_plots_template.py $@ --cdn
endif

repro: setup
	$(BIN)/dvc repro

# One test process per core (pytest-xdist): most tests wait on subprocesses and servers, or train with one
# thread. Tests that share a machine-wide service (apt, munge, Slurm) carry xdist_group("cluster") and run in one.
TEST_WORKERS ?= $(shell nproc)
test: setup
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadgroup --durations=20

ui: setup
	$(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port $(UI_PORT)

lint: setup
	$(BIN)/ruff check src tests benchmarks networks tools

# A two-node Slurm cluster on this machine, to try pipelines/slurm/train.sbatch (root: installs slurm-wlm and
# munge; README, "Training on a cluster"). Not needed for repro or test: the cluster tests start their own.
.PHONY: cluster cluster-down
cluster: setup
	$(BIN)/python -m tests.cluster up

cluster-down:
	$(BIN)/python -m tests.cluster down

clean:
	rm -rf $(VENV) data mlruns mlartifacts mlflow.db node_modules $(PLOTS_TEMPLATE)
