# One entry point for developers and CI. `make test` is the test command.
SHELL := /bin/bash
# uv from PATH, else the copy `tools/bootstrap.sh` installs into the project's tool folder.
UV ?= $(or $(shell command -v uv 2>/dev/null),$(CURDIR)/.tools/uv/bin/uv)
RUN := $(UV) run --frozen
GEN := libs/common/src/billing
BUF_VERSION := 1.75.0
BUF := .tools/node_modules/.bin/buf
# The console's charting library, from the npm registry at install time (MIT licence; not committed).
CHARTJS_VERSION := 4.6.1
CHARTJS := services/console/src/console/entrypoints/static/vendor/chart.umd.js
# The buf.validate contract, taken from the installed protovalidate package (see tools/), and the
# image of our contracts that buf lints offline.
BUILD := .build
VALIDATE_SET := $(BUILD)/buf_validate.binpb
PROTOS_IMAGE := $(BUILD)/protos.binpb
PROTOC := $(RUN) python -m grpc_tools.protoc -I protos --descriptor_set_in=$(VALIDATE_SET)
# The one list of services (services.toml): their folders and packages, for the checks that name every one.
SERVICE_NAMES := $(shell sed -n 's/^name = "\(.*\)"/\1/p' services.toml)
SERVICE_PACKAGES := $(shell sed -n 's/^package = "\(.*\)"/\1/p' services.toml)
empty :=
space := $(empty) $(empty)
SOURCE_FOLDERS := $(subst $(space),:,libs/common/src libs/devtools/src $(addsuffix /src,$(addprefix services/,$(SERVICE_NAMES))) .)
UNIT_TESTS := libs/common/tests/unit libs/devtools/tests/unit $(wildcard services/*/tests/unit) tests/unit
INTEGRATION_TESTS := libs/common/tests/integration $(wildcard services/*/tests/integration) tests/integration tests/chaos
PYTEST_FLAGS ?=

.PHONY: help bootstrap install protos buf-lint lint ruff mypy contracts manifests manifests-write test unit integration chaos run bench clean

help:
	@echo "make test    set up what is missing, generate, lint, then unit and integration tests (the CI command)"
	@echo "make run     start every service of services.toml, seed the demo company and bill a quarter (DEMO=0: no demo)"
	@echo "make protos  regenerate Python code from protos/"
	@echo "make lint    buf lint, ruff, mypy, the import-linter contracts and the Kubernetes manifests"
	@echo "make manifests-write  render deploy/k8s from services.toml and services/<name>/deploy/"
	@echo "make bench   run the benchmarks in bench/ and print their figures"
	@echo "make chaos   the chaos suite at full size (make test runs it reduced)"

bootstrap:
	bash tools/bootstrap.sh

install: bootstrap $(CHARTJS)
	$(UV) sync --frozen --all-packages

$(CHARTJS):
	npm install --silent --no-audit --no-fund --prefix .tools chart.js@$(CHARTJS_VERSION)
	mkdir -p $(dir $@)
	cp .tools/node_modules/chart.js/dist/chart.umd.js $@

$(BUF):
	npm install --silent --no-audit --no-fund --prefix .tools @bufbuild/buf@$(BUF_VERSION)

$(VALIDATE_SET): install
	$(RUN) python tools/buf_validate_descriptors.py $@

protos: $(VALIDATE_SET)
	rm -rf $(GEN) libs/common/src/buf
	mkdir -p $(GEN)
	$(PROTOC) --python_out=libs/common/src --mypy_out=libs/common/src \
		--grpc_python_out=libs/common/src --mypy_grpc_out=libs/common/src \
		$$(cd protos && find billing -name '*.proto' | sort) buf/validate/validate.proto
	find $(GEN) libs/common/src/buf -type d -exec touch {}/__init__.py \;
	touch $(GEN)/py.typed libs/common/src/buf/py.typed

# buf lints an image that protoc builds against the buf.validate descriptors: nothing is fetched.
buf-lint: $(BUF) $(VALIDATE_SET)
	$(PROTOC) --include_imports --include_source_info --descriptor_set_out=$(PROTOS_IMAGE) \
		$$(cd protos && find billing -name '*.proto' | sort)
	$(BUF) lint $(PROTOS_IMAGE) --config protos/buf.yaml --path billing

ruff: install
	$(RUN) ruff check .
	$(RUN) ruff format --check .

mypy: protos
	MYPYPATH=$(SOURCE_FOLDERS) $(RUN) mypy -p billing_common -p billing_devtools $(addprefix -p ,$(SERVICE_PACKAGES)) -p bench -p demo
	MYPYPATH=$(SOURCE_FOLDERS) $(RUN) mypy deploy/k8s/checks
	MYPYPATH=$(SOURCE_FOLDERS) $(RUN) mypy services/recurring/tests

# The contracts of pyproject.toml, written once with `{service}` and expanded over services.toml.
contracts: protos
	$(RUN) python -m billing_devtools.contracts

# Every kustomization rendered (deploy/k8s/checks/kustomize.py), validated against the Kubernetes
# 1.29-1.37 schemas and checked against the suite's rules; offline, from what `make install` installs.
# It also fails naming every per-service manifest that differs from what `manifests-write` renders.
manifests: protos
	$(RUN) pytest -q -p no:cacheprovider deploy/k8s/checks

# Render the manifests of deploy/k8s that follow from services.toml and services/<name>/deploy/
# (billing_devtools.manifests); commit what it writes.
manifests-write: install
	$(RUN) python -m billing_devtools.manifests --write

lint: buf-lint ruff mypy contracts manifests

unit: protos
	$(RUN) pytest $(PYTEST_FLAGS) $(UNIT_TESTS)

integration: protos
	$(RUN) pytest $(PYTEST_FLAGS) $(INTEGRATION_TESTS)

test: install protos lint unit integration

# Full size: 1,000 customers over five billing dates, each with its fault (tests/chaos).
chaos: protos
	BILLING_CHAOS_SIZE=full $(RUN) pytest $(PYTEST_FLAGS) tests/chaos

# DEMO=0 skips the demo company and its simulated quarter (`demo/`); RESET=1 starts over, dropping
# the services' schemas, Redis keys, queues and test clock left by earlier runs.
DEMO ?= 1
RESET ?= 0
run: protos
	BILLING_DEMO=$(DEMO) BILLING_RESET=$(RESET) $(RUN) python -m billing_devtools.devrun

bench: protos
	$(RUN) python bench/run_all.py

clean:
	rm -rf $(GEN) libs/common/src/buf $(BUILD) .tools .venv .mypy_cache .ruff_cache .pytest_cache
