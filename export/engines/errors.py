"""One exception tree for engine building.

`EngineError` and its children are user-facing conditions (no TensorRT here, a stale
plan, a parity failure, a config the engine shapes cannot be derived from): the CLI prints
them and exits 2. Anything else escaping is a bug and keeps its traceback.
"""
from __future__ import annotations


class EngineError(RuntimeError):
    """A plan cannot be built or used as asked; the message says what to do."""


class TensorRTUnavailable(EngineError):
    """Neither the TensorRT Python API nor a trtexec binary can be used on this host."""


class UnsupportedTensorRT(EngineError):
    """This TensorRT's major version lacks what the plan recipe needs (e.g. TensorRT 11)."""


class NoGpu(EngineError):
    """No CUDA device is visible, so nothing can be built or checked against one."""


class ShapeError(EngineError):
    """The engine's input shapes cannot be derived from the config (or the ONNX disagrees)."""


class ParityError(EngineError):
    """The built plan's outputs differ from ONNX Runtime beyond the stated tolerances."""


class LockTimeout(EngineError):
    """Another process held a plan's build lock for longer than we agreed to wait."""


class BuildFailed(EngineError):
    """TensorRT (API or trtexec) refused to build the network."""
