"""What this host builds for: the GPU (name, compute capability) and the TensorRT version.

Both are read without importing TensorRT or a CUDA framework when possible, so the
staleness check also works inside a Triton container (libnvinfer present, no `tensorrt`
Python module): the GPU through the CUDA driver API (libcuda, present wherever a driver
is), falling back to nvidia-smi; the TensorRT version through `tensorrt.__version__`,
else libnvinfer's `getInferLibVersion()`.
"""
from __future__ import annotations

import ctypes
import os
import re
import shutil
import subprocess
from dataclasses import dataclass

from .errors import NoGpu, UnsupportedTensorRT

_CU_ATTR_CC_MAJOR, _CU_ATTR_CC_MINOR = 75, 76   # CUdevice_attribute values (stable since CUDA 5)


@dataclass(frozen=True)
class GpuInfo:
    name: str
    compute_capability: str        # "9.0" (Triton's cc_model_filenames key spelling)

    @property
    def sm(self) -> str:
        return sm_tag(self.compute_capability)


def sm_tag(cc: str) -> str:
    """"9.0" -> "sm90", "12.0" -> "sm120" (the plan file name tag)."""
    m = re.fullmatch(r"(\d+)\.(\d+)", cc.strip())
    if not m:
        raise ValueError(f"not a compute capability: {cc!r}")
    return f"sm{m.group(1)}{m.group(2)}"


def cc_from_sm(tag: str) -> str:
    """"sm90" -> "9.0", "sm120" -> "12.0", "sm86" -> "8.6" (last digit is the minor)."""
    m = re.fullmatch(r"sm(\d+)(\d)", tag)
    if not m:
        raise ValueError(f"not an sm tag: {tag!r}")
    return f"{m.group(1)}.{m.group(2)}"


def _driver_gpu(ordinal: int) -> GpuInfo | None:
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    dev, major, minor = ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
    buf = ctypes.create_string_buffer(256)
    if cuda.cuInit(0) != 0 or cuda.cuDeviceGet(ctypes.byref(dev), ordinal) != 0:
        return None
    if (cuda.cuDeviceGetName(buf, 256, dev) != 0
            or cuda.cuDeviceGetAttribute(ctypes.byref(major), _CU_ATTR_CC_MAJOR, dev) != 0
            or cuda.cuDeviceGetAttribute(ctypes.byref(minor), _CU_ATTR_CC_MINOR, dev) != 0):
        return None
    return GpuInfo(buf.value.decode(errors="replace"), f"{major.value}.{minor.value}")


def parse_nvidia_smi(text: str, ordinal: int = 0) -> GpuInfo | None:
    """Line `ordinal` of `nvidia-smi --query-gpu=name,compute_cap --format=csv,noheader`."""
    rows = [r for r in text.strip().splitlines() if r.strip()]
    if ordinal >= len(rows):
        return None
    name, _, cc = rows[ordinal].rpartition(",")
    if not name or not re.fullmatch(r"\d+\.\d+", cc.strip()):
        return None
    return GpuInfo(name.strip(), cc.strip())


def _smi_gpu(ordinal: int) -> GpuInfo | None:
    exe = shutil.which("nvidia-smi")
    if not exe:
        return None
    try:
        out = subprocess.run([exe, "--query-gpu=name,compute_cap", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    # nvidia-smi ignores CUDA_VISIBLE_DEVICES; map the visible ordinal when it is a plain list.
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    ids = [v for v in visible.split(",") if v.strip().isdigit()]
    real = int(ids[ordinal]) if ordinal < len(ids) else ordinal
    return parse_nvidia_smi(out.stdout, real)


def current_gpu(ordinal: int = 0) -> GpuInfo:
    """The visible CUDA device `ordinal` (after CUDA_VISIBLE_DEVICES), or NoGpu."""
    info = _driver_gpu(ordinal) or _smi_gpu(ordinal)
    if info is None:
        raise NoGpu(f"no CUDA device {ordinal} visible here (libcuda.so.1 and nvidia-smi found none); "
                    "TensorRT plans are built and checked on the GPU that will serve them")
    return info


def version_from_int(n: int) -> str:
    """getInferLibVersion() / trtexec's `[TensorRT v100300]`: 100300 -> "10.3.0", 8601 -> "8.6.1".

    TensorRT 10 encodes major*10000 + minor*100 + patch; TensorRT 8 and older major*1000 + minor*100 + patch.
    """
    if n >= 10000:
        return f"{n // 10000}.{(n // 100) % 100}.{n % 100}"
    return f"{n // 1000}.{(n // 100) % 10}.{n % 100}"


# The recipe needs weak typing: BuilderFlag.FP16 / --fp16 with per-layer FP32 constraints.
# TensorRT 11 removed both (strongly typed networks only); 8.6 is the oldest with the
# builder optimisation level and memory-pool APIs build.py uses.
OLDEST_TENSORRT = (8, 6)
NEWEST_TENSORRT_MAJOR = 10
_REMOVED_IN = {11: "TensorRT 11 removed BuilderFlag.FP16 / trtexec --fp16 and per-layer precision constraints "
                   "(every network is strongly typed)"}


def require_supported_tensorrt(version: str | None, source: str) -> None:
    """Refuse a TensorRT the plan recipe cannot drive, naming it and why (UnsupportedTensorRT)."""
    if version is None:
        return
    m = re.match(r"(\d+)\.(\d+)", version)
    if not m:
        raise UnsupportedTensorRT(f"cannot read the TensorRT version {version!r} reported by {source}")
    major, minor = int(m.group(1)), int(m.group(2))
    if (major, minor) >= OLDEST_TENSORRT and major <= NEWEST_TENSORRT_MAJOR:
        return
    why = _REMOVED_IN.get(major, "newer than the recipe knows" if major > NEWEST_TENSORRT_MAJOR
                          else "older than the builder APIs the recipe uses")
    raise UnsupportedTensorRT(
        f"TensorRT {version} ({source}) is not supported by the plan builder: {why}. The recipe builds FP16 "
        f"plans with FP32 head, tail and face_align layers (docs/engines.md) and needs TensorRT "
        f"{OLDEST_TENSORRT[0]}.{OLDEST_TENSORRT[1]} to {NEWEST_TENSORRT_MAJOR}.x: build in the image of "
        "docker/triton.Dockerfile (its build asserts the TensorRT it carries) or an NGC TensorRT container "
        "of the same release")


def tensorrt_version() -> str | None:
    """TensorRT version of this host (major.minor.patch), or None when there is none."""
    try:
        import tensorrt  # noqa: F401  (heavy; only for its version here)

        return ".".join(tensorrt.__version__.split(".")[:3])
    except ImportError:
        pass
    for lib in ("libnvinfer.so.10", "libnvinfer.so.8", "libnvinfer.so"):
        try:
            nvinfer = ctypes.CDLL(lib)
        except OSError:
            continue
        try:
            return version_from_int(int(nvinfer.getInferLibVersion()))
        except AttributeError:
            continue
    return None
