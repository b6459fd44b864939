# agent-gateway: a small, non-root image. Build from the repository root:
#   docker build -t agent-gateway .
# Run (set an admin key: on 0.0.0.0 the gateway refuses to start without authentication):
#   docker run -p 8080:8080 -e GATEWAY_ADMIN_KEY="$(openssl rand -base64 32)" agent-gateway
# Agent files: mount a directory over /etc/gateway. State of the embedded store: /var/lib/gateway.

# Both stages must use the same image: the venv's interpreter is a link to the base image's Python.
ARG PYTHON_IMAGE=python:3.12-slim-trixie

FROM ${PYTHON_IMAGE} AS builder
WORKDIR /src
# A venv without pip or setuptools: the base image's pip installs into it, and only what the gateway runs on ships.
RUN python -m venv --without-pip /opt/venv
COPY pyproject.toml README.md ./
COPY gateway ./gateway
RUN pip --python /opt/venv/bin/python install --no-cache-dir --disable-pip-version-check . \
    && /opt/venv/bin/gateway version

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="agent-gateway" \
      org.opencontainers.image.description="An OpenAI-compatible API gateway in front of LLM providers" \
      org.opencontainers.image.licenses="Apache-2.0"

# tini as PID 1 forwards SIGTERM to the gateway (which drains, then exits 0) and reaps orphaned processes.
# 0.19 is tini's release; the Debian revision varies with the base image's point release.
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini=0.19.* \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 gateway \
    && useradd --system --uid 10001 --gid gateway --home-dir /var/lib/gateway --shell /usr/sbin/nologin gateway \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/gateway

COPY --from=builder /opt/venv /opt/venv
# The bundled demo config as a default: mount your agent files here instead (read-only is fine).
COPY config/ /etc/gateway/

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    GATEWAY_HOST=0.0.0.0 \
    GATEWAY_PORT=8080 \
    GATEWAY_CONFIG=/etc/gateway \
    GATEWAY_STATE_DIR=/var/lib/gateway

USER 10001:10001
WORKDIR /var/lib/gateway
EXPOSE 8080

# /healthz is liveness only (it stays 200 while draining); slim has no curl, so Python asks.
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('GATEWAY_PORT', '8080'), timeout=4)"]

ENTRYPOINT ["tini", "--", "gateway"]
CMD ["serve"]
