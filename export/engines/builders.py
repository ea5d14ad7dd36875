"""Which builder makes plans on this host: the TensorRT Python API, else trtexec.

Shared by `python -m export.engines` and the GPU image's start-up (deploy/plans.py).
"""
from __future__ import annotations

from functools import partial

from . import trt_api, trtexec
from .errors import TensorRTUnavailable


def pick_builder(name: str):
    """(builder function, parity candidate factory or None) for `name` in auto | python | trtexec."""
    if name in ("auto", "python") and trt_api.available():
        from .parity import trt_runner

        return trt_api.build, trt_runner
    if name == "python":
        trt_api.import_tensorrt()          # raises TensorRTUnavailable with the reason
    exe = trtexec.find_trtexec()
    if exe is None:
        raise TensorRTUnavailable("cannot build TensorRT plans on this host: `import tensorrt` fails and no "
                                  "trtexec binary was found ($TRTEXEC, PATH, /usr/src/tensorrt/bin). Build "
                                  "inside an NGC TensorRT or Triton container, see docs/engines.md")
    return partial(trtexec.build, exe=exe), None
