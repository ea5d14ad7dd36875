"""FP16 TensorRT plans with one dynamic-batch optimization profile (contract/shapes.py) per model (`make export-engines`).

Light to import (no tensorrt/onnx at import time). The functions other packages use:

    cc_model_filenames(version_dir) -> {"9.0": "model.sm90.plan", ...}
        Triton's cc_model_filenames map for the per-compute-capability plans present.
    check_model(model, repository, gpu=None, trt_version=...) -> PlanCheck
    check_repository(repository, ...) -> [PlanCheck]
        Whether the plan Triton would load on this GPU may be served; `.ok`, `.status`
        ("ok" | "stale" | "foreign" | "missing") and `.message` (which plan, why, how to rebuild).
    derive_shapes(contract, max_batch=None) -> ShapeRanges
"""
from .check import check_model, check_repository
from .errors import EngineError, NoGpu, ParityError, ShapeError, TensorRTUnavailable
from .gpu import GpuInfo, current_gpu, tensorrt_version
from .metadata import PlanCheck, cc_model_filenames, cc_model_filenames_from_names, check_plan, plan_filename
from .shapes import ShapeRanges, derive_shapes

__all__ = ["check_model", "check_repository", "EngineError", "NoGpu", "ParityError", "ShapeError",
           "TensorRTUnavailable", "GpuInfo", "current_gpu", "tensorrt_version", "PlanCheck",
           "cc_model_filenames", "cc_model_filenames_from_names", "check_plan", "plan_filename",
           "ShapeRanges", "derive_shapes"]
