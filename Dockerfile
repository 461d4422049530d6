# syntax=docker/dockerfile:1
# budgetd container image: `budgetd serve` as a non-root user.
# Build: docker build -t budgetd:0.2.0 .
# tests/test_docker_entrypoint.py builds the same wheel set (`pip wheel ./client .`)
# and runs the same entrypoint, because no Docker engine runs in CI.

ARG PYTHON_IMAGE=python:3.12-slim-bookworm

# ---- build: wheels for budgetd, budgetd-client and every dependency ----
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml ./
COPY client/ client/
COPY service/ service/
RUN pip wheel --wheel-dir /wheels ./client .

# ---- runtime: a venv installed from those wheels only; no compiler, no pip cache ----
FROM ${PYTHON_IMAGE} AS runtime
ARG BUDGETD_UID=10001
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    PATH=/opt/budgetd/bin:$PATH \
    BUDGETD_LISTEN=0.0.0.0:50051 \
    BUDGETD_METRICS_LISTEN=0.0.0.0:9464 \
    BUDGETD_DATA_DIR=/var/lib/budgetd \
    BUDGETD_LOG_FORMAT=json
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    python -m venv /opt/budgetd \
 && /opt/budgetd/bin/pip install --no-index --find-links /wheels budgetd budgetd-client \
 && /opt/budgetd/bin/pip uninstall -y pip setuptools \
 && groupadd --system --gid ${BUDGETD_UID} budgetd \
 && useradd --system --uid ${BUDGETD_UID} --gid ${BUDGETD_UID} --home-dir /var/lib/budgetd \
      --shell /usr/sbin/nologin budgetd \
 && install -d -o ${BUDGETD_UID} -g ${BUDGETD_UID} -m 0750 /var/lib/budgetd
# Numeric user, so Kubernetes' runAsNonRoot can verify it without /etc/passwd.
USER 10001:10001
WORKDIR /var/lib/budgetd
# gRPC (API + health + reflection), Prometheus metrics.
EXPOSE 50051 9464
# Only the embedded Redis mode writes here; in Kubernetes Redis is external.
VOLUME ["/var/lib/budgetd"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["budgetd"]
CMD ["serve"]
