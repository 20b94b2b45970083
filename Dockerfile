# syntax=docker/dockerfile:1
# lbproxy's image: the proxy and its Kubernetes backend, nothing else.
#
#   docker build -t lbproxy:0.1.0 .
#   docker run --rm -p 8080:8080 -v "$PWD/my-config.yaml:/etc/lbproxy/config.yaml:ro" lbproxy:0.1.0
#
# The Helm chart (charts/lbproxy) mounts its ConfigMap at /etc/lbproxy/config.yaml.
# tests/test_dockerfile.py runs this file's RUN steps in a scratch virtualenv (no Docker engine in CI).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: lbproxy's wheel and the wheels of its runtime dependencies, installed into a virtualenv -------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
ARG WHEELS=/wheels
ARG VENV=/opt/lbproxy
WORKDIR /src
COPY pyproject.toml README.md ./
COPY lbproxy/ lbproxy/
# The kubernetes extra is the official client the kubernetes backend needs, the fast extra uvloop, the
# postgres extra asyncpg (the chart's queue endpoints on PostgreSQL); no test or dev tools.
RUN python -m pip wheel --wheel-dir "$WHEELS" ".[kubernetes,fast,postgres]"
# A virtualenv without pip: the runtime image gets lbproxy and its dependencies only.
RUN python -m venv --without-pip "$VENV" \
 && python -m pip --python "$VENV/bin/python" install --no-index --find-links "$WHEELS" "lbproxy[kubernetes,fast,postgres]"

# --- runtime ------------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="lbproxy" \
      org.opencontainers.image.description="Load-balancing, autoscaling endpoint for GPU HTTP workers" \
      org.opencontainers.image.licenses="Apache-2.0"
# A fixed numeric user, so that Kubernetes' runAsNonRoot can verify it.
RUN groupadd --system --gid 10001 lbproxy \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin lbproxy
COPY --from=build /opt/lbproxy /opt/lbproxy
ENV PATH=/opt/lbproxy/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HEALTHCHECK_URL=http://127.0.0.1:9090/healthz
USER 10001:10001
# 8080: the endpoint (listen); 9090: the admin port (admin: /healthz, /readyz, /status, /metrics).
EXPOSE 8080 9090
# The admin port's liveness route; set HEALTHCHECK_URL when the config's admin port is not 9090.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['HEALTHCHECK_URL'], timeout=2)"]
ENTRYPOINT ["lbproxy"]
CMD ["serve", "/etc/lbproxy/config.yaml"]
