# The two sacred commands: `make demo` and `make test`. Each installs what it needs.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test demo lint typecheck pytest kafka tools install system-deps clean

test: install kafka tools lint typecheck pytest

install: $(STAMP)

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "python3 >= 3.11 is required"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Java 17+ and Maven come with the machine image; install them from Debian if they do not.
system-deps:
	@if ! command -v java >/dev/null || ! command -v mvn >/dev/null; then \
	  echo "installing Java and Maven from Debian packages"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openjdk-17-jre-headless maven; \
	fi

# Download the pinned Apache Kafka jars from Maven Central into the user cache (once).
kafka: install system-deps
	$(BIN)/python -m devtools.kafka_local fetch

# Pinned helm, kubeconform, actionlint, promtool/prometheus, shellcheck for the deployment and
# release verification tests.
tools: install
	$(BIN)/python -m devtools.tools install-all

LINT_PATHS := $(wildcard klag_pipeline tests devtools bench deploy)

lint: install
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)

typecheck: install
	$(BIN)/mypy

pytest: install kafka tools
	$(BIN)/python -m pytest

demo: install kafka
	$(BIN)/python -m devtools.demo

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache build dist
