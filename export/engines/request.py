"""What a builder is asked to do, and what it hands back (shared by both builders)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .precision import MARK, PrecisionPlan
from .shapes import ShapeRanges

DEFAULT_WORKSPACE_MB = 8192
DEFAULT_OPT_LEVEL = 3      # TensorRT's default builder optimisation level
# Bump when how plans are built changes (part of the build flags, so older plans go
# stale). 2: TF32 cleared (TensorRT 10 enables it by default).
RECIPE_VERSION = 2


@dataclass(frozen=True)
class BuildRequest:
    model: str
    onnx: Path                     # the MARKED copy (FP32 nodes renamed MARK + name)
    shapes: ShapeRanges
    precision: PrecisionPlan
    timing_cache: Path
    workspace_mb: int = DEFAULT_WORKSPACE_MB
    opt_level: int = DEFAULT_OPT_LEVEL
    device: int = 0
    log: Callable[[str], None] = print

    @property
    def fp32_pattern(self) -> str:
        return MARK + "*"


@dataclass(frozen=True)
class BuildOutput:
    plan: bytes
    tensorrt_version: str
    builder: str                   # "tensorrt-python" | "trtexec"


def build_flags(shapes: ShapeRanges, precision: PrecisionPlan, workspace_mb: int, opt_level: int) -> dict:
    """Everything that shapes the plan besides TensorRT, GPU and ONNX (compared for staleness)."""
    # "profile" (TensorRT's optimization profile) is the key stored plans were filed under
    return {"recipe": RECIPE_VERSION, "profile": shapes.as_dict(), **precision.flags(),
            "tf32": False, "workspace_mb": workspace_mb, "opt_level": opt_level, "timing_cache": True}


_FRAMEWORK_HEADER_HINT = ("the plan starts with a length-prefixed JSON header (an Ultralytics .engine?): "
                          "Triton accepts raw TensorRT plans only")


def assert_raw_plan(data: bytes) -> None:
    """Refuse plans with framework headers in front (Triton rejects them)."""
    import json

    if len(data) < 64:
        raise ValueError(f"plan is only {len(data)} bytes: the builder produced no engine")
    n = int.from_bytes(data[:4], "little")
    if data[4:5] == b"{" and 2 <= n < len(data) - 4:
        try:
            json.loads(data[4:4 + n].decode())
        except (UnicodeDecodeError, ValueError):
            return
        raise ValueError(_FRAMEWORK_HEADER_HINT)
