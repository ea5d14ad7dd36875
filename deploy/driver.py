"""Does this node's NVIDIA driver run the image's CUDA? Checked before any plan work, so a
too-old driver fails the start with what to change instead of an opaque CUDA error.

NGC images set CUDA_VERSION ("13.1.0.036"). The driver API's cuDriverGetVersion gives the
newest CUDA the loaded libcuda supports (13000 = 13.0): the node's driver, or the image's
forward-compatibility libcuda when NGC's entrypoint enabled it (data-center GPUs only).
Within one major version CUDA's minor-version compatibility runs a newer runtime on an
older driver (plans are compiled for the GPU: no PTX JIT), so only the major must match.
"""
from __future__ import annotations

import ctypes
import os
import re
from pathlib import Path

from deploy.errors import StartupError

# The driver branch that first runs each CUDA major without forward compatibility (NVIDIA's
# data-center driver table: R535 runs CUDA 12 at most, R580 runs CUDA 13).
DRIVER_BRANCH = {12: "R525", 13: "R580"}
PROC_VERSION = Path("/proc/driver/nvidia/version")


def driver_cuda() -> int | None:
    """cuDriverGetVersion() of the libcuda this process loads (13010 = 13.1), None without one."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    version = ctypes.c_int()
    return version.value if cuda.cuDriverGetVersion(ctypes.byref(version)) == 0 else None


def kernel_driver(text: str | None = None) -> str | None:
    """"580.95.05" from /proc/driver/nvidia/version (the node's kernel module), None if unreadable."""
    if text is None:
        try:
            text = PROC_VERSION.read_text()
        except OSError:
            return None
    m = re.search(r"Kernel Module\s+(?:for \S+\s+)?(\d+\.\d+(?:\.\d+)?)", text)
    return m.group(1) if m else None


def image_cuda(value: str | None = None) -> tuple[int, int] | None:
    """(major, minor) of CUDA_VERSION, None when the image does not say (not an NGC image)."""
    value = os.environ.get("CUDA_VERSION", "") if value is None else value
    m = re.match(r"(\d+)\.(\d+)", value.strip())
    return (int(m.group(1)), int(m.group(2))) if m else None


def check(supported: int | None, image: tuple[int, int] | None, kernel: str | None) -> None:
    """StartupError when the driver's newest CUDA (`supported`, cuDriverGetVersion) is of an
    older major than the image's; nothing to say when either is unknown."""
    if supported is None or image is None:
        return
    major, minor = supported // 1000, (supported % 1000) // 10
    if major >= image[0]:
        return
    branch = DRIVER_BRANCH.get(image[0], f"a driver for CUDA {image[0]}")
    raise StartupError(
        f"this node's NVIDIA driver {kernel or '(version unreadable)'} runs CUDA {major}.{minor} at most; this image "
        f"is built on CUDA {image[0]}.{image[1]}. Upgrade the GPU nodes to driver branch {branch} or newer (docs/"
        "deploy.md, 'Drivers'), or build the image from an NGC release of CUDA "
        f"{major} (--build-arg NGC_RELEASE=...); forward compatibility (data-center GPUs, NGC's entrypoint) "
        "did not take effect here")


def check_node() -> None:
    check(driver_cuda(), image_cuda(), kernel_driver())
