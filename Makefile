# The two sacred commands: `make demo` and `make test`. Each installs what it needs.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test demo lint typecheck pytest kafka tools install system-deps clean

test: install kafka tools lint typecheck pytest

install: $(STAMP)

# The kerberos extra (gssapi) compiles against libkrb5-dev, which system-deps installs.
$(STAMP): pyproject.toml | system-deps
	@command -v $(PYTHON) >/dev/null || { echo "python3 >= 3.11 is required"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,kerberos]'
	touch $(STAMP)

# Java 17+ and Maven come with the machine image; install them from Debian if they do not.
system-deps:
	@if ! command -v java >/dev/null || ! command -v mvn >/dev/null; then \
	  echo "installing Java and Maven from Debian packages"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openjdk-17-jre-headless maven; \
	fi
	@# A throwaway MIT KDC for the GSSAPI tests, and the headers the gssapi package builds against.
	@if ! command -v krb5kdc >/dev/null || ! command -v kadmin.local >/dev/null || ! command -v krb5-config >/dev/null; then \
	  echo "installing MIT Kerberos (KDC, admin tools, libkrb5-dev) from Debian packages"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq krb5-kdc krb5-admin-server libkrb5-dev; \
	fi
	@# Headless Chromium for the status page test (tests/integration/test_status_page_browser.py).
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
	  echo "installing Chromium and its driver from Debian packages"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; \
	fi

# Download the pinned Apache Kafka jars from Maven Central into the user cache (once).
kafka: install system-deps
	$(BIN)/python -m devtools.kafka_local fetch

# Pinned helm, kubeconform, actionlint, promtool/prometheus, shellcheck for the deployment and
# release verification tests; kube-apiserver, etcd and kubectl built from source (devtools/kube.py:
# once per machine, ~10-15 min on two cold cores, then cached) for the Lease and chart tests.
tools: install
	$(BIN)/python -m devtools.tools install-all
	$(BIN)/python -m devtools.kube install

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
