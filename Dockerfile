# syntax=docker/dockerfile:1
#
# airgap-proxy container image.
#
#   docker build -t airgap-proxy:0.1.0 .
#   docker run --rm --read-only -v airgap-data:/data -p 127.0.0.1:8080:8080 airgap-proxy:0.1.0
#
# The image needs no network access when it starts: everything is installed at
# build time. It runs as an unprivileged user, works with a read-only root file
# system and writes only to /data (a volume: the tenant store lives there).
# Configuration comes from environment variables or a mounted YAML file
# (AIRGAP_PROXY_CONFIG); see docs/configuration.md.

ARG PYTHON_IMAGE=python:3.11-slim

# --- build: the package and its dependencies, in a virtualenv -----------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore
RUN python -m venv /opt/airgap-proxy
WORKDIR /src
COPY pyproject.toml README.md ./
COPY airgap_proxy ./airgap_proxy
# pip compiles the bytecode here, so nothing is written at run time. pip and
# setuptools are not needed to run and are removed from the runtime virtualenv.
RUN /opt/airgap-proxy/bin/pip install . \
 && /opt/airgap-proxy/bin/pip uninstall --yes pip setuptools \
 && /opt/airgap-proxy/bin/airgap-proxy --version

# --- runtime -------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
ARG PYTHON_IMAGE
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="airgap-proxy" \
      org.opencontainers.image.description="OpenAI-compatible reverse proxy that keeps LLM traffic inside the network (air gap)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"

# A fixed numeric uid/gid, so that Kubernetes' runAsNonRoot can verify it.
RUN groupadd --system --gid 10001 airgap-proxy \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
            --shell /usr/sbin/nologin airgap-proxy \
 && install -d -o 10001 -g 10001 -m 0750 /data

COPY --from=build /opt/airgap-proxy /opt/airgap-proxy

# AIRGAP_PROXY_HOST: inside a container the proxy must listen on every
# interface for a published port to reach it (the default is 127.0.0.1).
# The port stays the default, 8080 (listen.port or AIRGAP_PROXY_PORT change it).
ENV PATH=/opt/airgap-proxy/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    AIRGAP_PROXY_HOST=0.0.0.0

# The working directory is the data volume: relative paths in the config
# (tenants.store: tenants.db) land there.
WORKDIR /data
VOLUME ["/data"]
USER 10001:10001
EXPOSE 8080

# No curl in the slim image: the standard library's http.client, which never
# reads proxy variables, asks the proxy's liveness endpoint.
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import http.client, os, sys; c = http.client.HTTPConnection('127.0.0.1', int(os.environ.get('AIRGAP_PROXY_PORT') or 8080), timeout=3); c.request('GET', '/healthz'); sys.exit(0 if c.getresponse().status == 200 else 1)"]

CMD ["airgap-proxy", "serve"]
