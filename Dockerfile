# syntax=docker/dockerfile:1
# klag-pipeline container image: `docker build -t klag-pipeline:0.1.0 --build-arg VERSION=0.1.0 .`
# The settings file is mounted at /etc/klag-pipeline/settings.toml (see docs/deployment.md).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- build: every wheel the runtime needs, so the runtime stage installs offline -------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY klag_pipeline ./klag_pipeline
RUN pip wheel --wheel-dir /wheels .

# ---- runtime ----------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="klag-pipeline" \
      org.opencontainers.image.description="Kafka consumer-group lag exporter: offset lag, exact time lag and data-loss detection" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/klag-pipeline/klag-pipeline" \
      org.opencontainers.image.url="https://github.com/klag-pipeline/klag-pipeline"

# No bytecode written at run time: the root filesystem may be read-only.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

RUN groupadd --system --gid 10001 klag \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin klag

# Bind-mounted, not copied: the wheels never become a layer of the final image. pip compiles the
# bytecode here, at build time.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels "klag-pipeline==${VERSION}"

# Numeric user so that Kubernetes runAsNonRoot can verify it without /etc/passwd.
USER 10001:10001
WORKDIR /tmp
EXPOSE 8000

# slim has no curl: probe /health with the interpreter. The port follows the same environment
# override the exporter reads (KLAG_EXPORTER__HTTP_PORT); a 503 raises, so the check fails.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('KLAG_EXPORTER__HTTP_PORT', '8000'), timeout=4)"]

ENTRYPOINT ["klag-pipeline"]
CMD ["run", "/etc/klag-pipeline/settings.toml"]
