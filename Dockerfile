# syntax=docker/dockerfile:1
# klag-pipeline container image, installed offline from wheels built on the host:
#
#   python -m devtools.image wheels dist/wheels        # or: pip wheel --wheel-dir dist/wheels .
#   docker build -t klag-pipeline:0.1.0 --build-arg VERSION=0.1.0 .
#
# The settings file is mounted at /etc/klag-pipeline/settings.toml (see docs/deployment.md).
# BASE_IMAGE is any Debian-family image with Python 3.11 and its venv module: the published
# image uses the official slim one, the tests a debootstrap bookworm (devtools/image.py).

ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE}
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="klag-pipeline" \
      org.opencontainers.image.description="Kafka consumer-group lag exporter: offset lag, exact time lag and data-loss detection" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/klag-pipeline/klag-pipeline" \
      org.opencontainers.image.url="https://github.com/klag-pipeline/klag-pipeline"

# No bytecode written at run time: the root filesystem may be read-only. The venv comes first on
# PATH, so the entrypoint does not depend on where the base keeps its python3.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PATH=/opt/klag-pipeline/bin:$PATH

RUN groupadd --system --gid 10001 klag \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin klag

# Bind-mounted from the build context, not copied: the wheels never become a layer. Offline
# (--no-index): exactly the wheels built on the host, pinned to the one version. pip compiles
# the bytecode here, at build time; pip and setuptools leave the venv afterwards.
RUN --mount=type=bind,source=dist/wheels,target=/wheels \
    python3 -m venv /opt/klag-pipeline \
    && pip install --no-index --find-links=/wheels "klag-pipeline==${VERSION}" \
    && pip uninstall --yes pip setuptools

# Numeric user so that Kubernetes runAsNonRoot can verify it without /etc/passwd.
USER 10001:10001
WORKDIR /tmp
EXPOSE 8000

# Docker only (OCI images and Kubernetes ignore it; the Helm chart's probes are the equivalent).
# No curl in the image: probe /health with the interpreter. The port follows the same environment
# override the exporter reads (KLAG_EXPORTER__HTTP_PORT); a 503 raises, so the check fails.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('KLAG_EXPORTER__HTTP_PORT', '8000'), timeout=4)"]

ENTRYPOINT ["klag-pipeline"]
CMD ["run", "/etc/klag-pipeline/settings.toml"]
