# syntax=docker/dockerfile:1.7
# The JPEG gateway: slim, multi-stage, non-root; no compiler, no torch, no inference runtime.
#
#   docker build -f docker/gateway.Dockerfile -t visionserve-gateway .
#   docker run --rm -p 8080:8080 -e VISIONSERVE_GATEWAY_TRITON_GRPC=triton:8001 visionserve-gateway
#
# Multi-arch: nothing names an architecture (python:3.11-slim is amd64 + arm64; arm64 wheels
# of every dependency were not checked here).
#
# Settings are VISIONSERVE_GATEWAY_* environment variables (gateway/settings.py). The image
# carries model_repository/*/config.pbtxt: the contract the gateway checks Triton against.
ARG PYTHON_IMAGE=python:3.11.10-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml constraints.txt ./
COPY deploy/requirements.py deploy/
# The `gateway` extra alone (what gateway/ imports: no ONNX Runtime, OpenVINO or torch),
# pinned by constraints.txt; all are manylinux wheels.
RUN python deploy/requirements.py --only gateway > /tmp/requirements.txt \
    && python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir -c constraints.txt -r /tmp/requirements.txt

FROM ${PYTHON_IMAGE}
ENV PATH=/opt/venv/bin:${PATH} PYTHONPATH=/app PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    VISIONSERVE_GATEWAY_HOST=0.0.0.0 VISIONSERVE_GATEWAY_PORT=8080
RUN groupadd --system --gid 10001 visionserve \
    && useradd --system --uid 10001 --gid visionserve --home-dir /nonexistent --no-create-home \
       --shell /usr/sbin/nologin visionserve
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
# The project code the gateway imports, and nothing else: one line per package
# (tests/unit/test_deploy_docker.py walks gateway/'s imports and checks these lines cover them).
COPY gateway/ gateway/
COPY contract/ contract/
COPY imaging/ imaging/
COPY model_repository/ model_repository/
USER 10001:10001
# 8080: the API; 8081: /metrics only (VISIONSERVE_GATEWAY_METRICS_PORT), not for clients.
EXPOSE 8080 8081
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:8080/healthz', timeout=2)"]
ENTRYPOINT ["python", "-m", "gateway"]
