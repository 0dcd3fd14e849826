# One entry point for developers and CI. `make test` is the test command.
SHELL := /bin/bash
UV ?= uv
RUN := $(UV) run --frozen
GEN := libs/common/src/billing
BUF_VERSION := 1.75.0
BUF := .tools/node_modules/.bin/buf
SERVICES := gateway-adapter quota recurring dunning tier
UNIT_TESTS := libs/common/tests/unit $(wildcard services/*/tests/unit) tests/unit
INTEGRATION_TESTS := libs/common/tests/integration $(wildcard services/*/tests/integration) tests/integration
PYTEST_FLAGS ?=

.PHONY: help install protos buf-lint lint ruff mypy contracts test unit integration run bench clean

help:
	@echo "make test    install, generate, lint, then unit and integration tests (the CI command)"
	@echo "make run     start all five services against local PostgreSQL, Redis and RabbitMQ"
	@echo "make protos  regenerate Python code from protos/"
	@echo "make lint    buf lint, ruff, mypy and the import-linter contracts"
	@echo "make bench   run the benchmarks in bench/ and print their figures"

install:
	$(UV) sync --frozen --all-packages

$(BUF):
	npm install --silent --no-audit --no-fund --prefix .tools @bufbuild/buf@$(BUF_VERSION)

protos: install
	rm -rf $(GEN)
	mkdir -p $(GEN)
	$(RUN) python -m grpc_tools.protoc -I protos \
		--python_out=libs/common/src --mypy_out=libs/common/src \
		--grpc_python_out=libs/common/src --mypy_grpc_out=libs/common/src \
		$$(find protos -name '*.proto' | sort)
	find $(GEN) -type d -exec touch {}/__init__.py \;
	touch $(GEN)/py.typed

buf-lint: $(BUF)
	cd protos && ../$(BUF) lint

ruff: install
	$(RUN) ruff check .
	$(RUN) ruff format --check .

mypy: protos
	$(RUN) mypy -p billing_common -p gateway_adapter -p quota -p recurring -p dunning -p tier -p bench

contracts: protos
	$(RUN) lint-imports

lint: buf-lint ruff mypy contracts

unit: protos
	$(RUN) pytest $(PYTEST_FLAGS) $(UNIT_TESTS)

integration: protos
	$(RUN) pytest $(PYTEST_FLAGS) $(INTEGRATION_TESTS)

test: install protos lint unit integration

run: protos
	$(RUN) python -m billing_common.devrun

bench: protos
	$(RUN) python bench/run_all.py

clean:
	rm -rf $(GEN) .tools .venv .mypy_cache .ruff_cache .pytest_cache
