# syntax=docker/dockerfile:1
#
# One image for both roles of sectra-strand-bridge:
#   web:    sectra-bridge serve --host 0.0.0.0 --port 8000   (the default command)
#   worker: sectra-bridge worker --concurrency N              (set BRIDGE_HEALTH_URL, see HEALTHCHECK)
#
# Any Debian-family base with a `python3` (3.11+) that has the venv module works: the official
# python:3.11-slim-bookworm (python3 in /usr/local/bin, the default) or a Debian bookworm made with
# debootstrap (python3, python3-venv; python3 in /usr/bin), which is what `.ci/image-build` builds
# and smoke-tests with buildah. Nothing below names the interpreter's path: the venv is made by the
# base's `python3`, and builder and runtime share the base, so the venv's interpreter symlink
# resolves in the final image whichever layout the base has.
# Pin a digest for reproducible builds: --build-arg BASE_IMAGE=python:3.11-slim-bookworm@sha256:...
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS builder

# The index configuration comes from optional build secrets (never from a layer or a build arg,
# which the image history would keep): `--secret id=pip.conf,src=...` is read through
# PIP_CONFIG_FILE, and a private CA bundle that file names as `cert = /run/secrets/pip-ca.crt`
# comes as `--secret id=pip-ca.crt,src=...`. Without them pip uses PyPI.
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_CONFIG_FILE=/run/secrets/pip.conf

WORKDIR /src
# Dependencies first, from pyproject.toml alone (tomllib is in Python 3.11's standard library), so
# this layer is rebuilt when the dependency list changes, not on every change to the code. Every
# dependency ships manylinux wheels, so no compiler is needed; --only-binary makes a dependency that
# would need one fail the build instead of silently compiling.
COPY pyproject.toml ./
RUN --mount=type=secret,id=pip.conf --mount=type=secret,id=pip-ca.crt \
    python3 -m venv /opt/venv \
    && python3 -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies'], sep='\n')" \
       > /tmp/requirements.txt \
    && /opt/venv/bin/python -m pip install --no-cache-dir --only-binary=:all: -r /tmp/requirements.txt

# Then our own wheel, installed without touching the dependencies; `pip check` proves the wheel's
# own metadata is satisfied by what the layer above installed. The context is only what the wheel
# is built from: .dockerignore is an allow-list (pyproject.toml, README.md and the four packages),
# so secrets, tests and caches never get here. Nothing of the source tree or the build tooling
# reaches the runtime stage, which copies the venv alone.
COPY . ./
RUN --mount=type=secret,id=pip.conf --mount=type=secret,id=pip-ca.crt \
    /opt/venv/bin/python -m pip wheel --no-cache-dir --no-deps --wheel-dir /wheels . \
    && /opt/venv/bin/python -m pip install --no-cache-dir --no-deps /wheels/*.whl \
    && /opt/venv/bin/python -m pip check \
    && /opt/venv/bin/sectra-bridge --help > /dev/null

FROM ${BASE_IMAGE} AS runtime

# A fixed UID/GID so Kubernetes securityContext (runAsUser/fsGroup) and volume ownership match the image.
RUN groupadd --system --gid 10001 bridge \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin bridge \
    && mkdir -p /var/lib/sectra-bridge/work /var/lib/sectra-bridge/tmp \
    && chown -R 10001:10001 /var/lib/sectra-bridge

COPY --from=builder /opt/venv /opt/venv

# Everything the process writes (staged slides, temp files) lives under /var/lib/sectra-bridge,
# so the root filesystem can be mounted read-only; the .pyc files were compiled at install time.
# PATH and LANG are spelt out rather than inherited, so the base's own ENV does not matter.
ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    BRIDGE_WORK_DIR=/var/lib/sectra-bridge/work \
    TMPDIR=/var/lib/sectra-bridge/tmp \
    BRIDGE_WORKER_METRICS_PORT=9100 \
    BRIDGE_HEALTH_URL=http://127.0.0.1:8000/healthz

# Build metadata last: a new revision does not invalidate the cached layers above.
ARG BASE_IMAGE
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
      org.opencontainers.image.base.name="${BASE_IMAGE}"

VOLUME ["/var/lib/sectra-bridge"]
WORKDIR /var/lib/sectra-bridge
USER 10001:10001
EXPOSE 8000 9100

# The web role answers /healthz on 8000; the worker role has no web server, so it sets
# BRIDGE_HEALTH_URL=http://127.0.0.1:9100/metrics (its metrics port). Kubernetes ignores
# HEALTHCHECK and uses the chart's probes instead. `.ci/image-build` runs this very command
# (read back from the built image) against a started `serve`.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["/opt/venv/bin/python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['BRIDGE_HEALTH_URL'], timeout=4).close()"]

ENTRYPOINT ["sectra-bridge"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
