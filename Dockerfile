# syntax=docker/dockerfile:1
#
# One image for both roles of sectra-strand-bridge:
#   web:    sectra-bridge serve --host 0.0.0.0 --port 8000   (the default command)
#   worker: sectra-bridge worker --concurrency N              (set BRIDGE_HEALTH_URL, see HEALTHCHECK)
#
# The build is not exercised on the project's own machines (they have no Docker engine);
# `.ci/deploy-lint` lints this file with hadolint. See docs/deploy.md.
#
# Builder and runtime must share the same base so the venv's interpreter symlink
# (/opt/venv/bin/python -> /usr/local/bin/python3.11) resolves in the final image.
# Pin a digest for reproducible builds: --build-arg PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:...
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
# Only what the wheel is built from (.dockerignore keeps secrets, tests and caches out of the context).
COPY pyproject.toml README.md ./
COPY service ./service
COPY workers ./workers
COPY strand_client ./strand_client
COPY sectra_adapter ./sectra_adapter

# Build our own wheel first, then install it into a fresh venv: the dependency set comes from
# pyproject.toml alone, and nothing of the source tree (or the build tooling) reaches the runtime.
# Every dependency ships manylinux wheels, so no compiler is needed here either; --only-binary
# makes a dependency that would need one fail the build instead of silently compiling.
RUN python -m pip wheel --no-cache-dir --no-deps --wheel-dir /wheels . \
    && python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --only-binary=:all: /wheels/*.whl \
    && /opt/venv/bin/sectra-bridge --help > /dev/null


FROM ${PYTHON_IMAGE} AS runtime

ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="sectra-strand-bridge" \
      org.opencontainers.image.description="Connects a Sectra digital-pathology PACS (IA-API) to the Strand AI platform." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="LicenseRef-Proprietary" \
      org.opencontainers.image.vendor="sectra-strand-bridge" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"

# A fixed UID/GID so Kubernetes securityContext (runAsUser/fsGroup) and volume ownership match the image.
RUN groupadd --system --gid 10001 bridge \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin bridge \
    && mkdir -p /var/lib/sectra-bridge/work /var/lib/sectra-bridge/tmp \
    && chown -R 10001:10001 /var/lib/sectra-bridge

COPY --from=builder /opt/venv /opt/venv

# Everything the process writes (staged slides, temp files) lives under /var/lib/sectra-bridge,
# so the root filesystem can be mounted read-only; the .pyc files were compiled at install time.
ENV PATH=/opt/venv/bin:${PATH} \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    BRIDGE_WORK_DIR=/var/lib/sectra-bridge/work \
    TMPDIR=/var/lib/sectra-bridge/tmp \
    BRIDGE_WORKER_METRICS_PORT=9100 \
    BRIDGE_HEALTH_URL=http://127.0.0.1:8000/healthz

VOLUME ["/var/lib/sectra-bridge"]
WORKDIR /var/lib/sectra-bridge
USER 10001:10001
EXPOSE 8000 9100

# The web role answers /healthz on 8000; the worker role has no web server, so it sets
# BRIDGE_HEALTH_URL=http://127.0.0.1:9100/metrics (its metrics port). Kubernetes ignores
# HEALTHCHECK and uses the chart's probes instead.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['BRIDGE_HEALTH_URL'], timeout=4).close()"]

ENTRYPOINT ["sectra-bridge"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
