"""Build a plan with the TensorRT Python API (imported lazily: only this module needs it)."""
from __future__ import annotations

import time

from .errors import BuildFailed, EngineError, TensorRTUnavailable
from .gpu import require_supported_tensorrt
from .lock import place_bytes, target_lock
from .request import BuildOutput, BuildRequest


def import_tensorrt():
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise TensorRTUnavailable(f"the TensorRT Python API is not importable here ({exc}); build inside "
                                  "an NGC TensorRT/Triton container or install TensorRT (docs/engines.md)") from exc
    return trt


def available() -> bool:
    try:
        import_tensorrt()
    except TensorRTUnavailable:
        return False
    return True


def _make_logger(trt, log):
    """Forward TensorRT's warnings and errors to our log (its INFO is too chatty)."""

    sev = trt.ILogger.Severity
    shown = {sev.INTERNAL_ERROR, sev.ERROR, sev.WARNING}

    class Logger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)

        def log(self, severity, msg):
            if severity in shown:
                log(f"  tensorrt: {msg}")

    return Logger()


def _keep_fp32(trt, network, mark: str) -> int:
    """Pin marked layers to FP32 compute and FP32 float outputs; returns how many."""
    floats = (trt.float32, trt.float16)
    skip = {trt.LayerType.CONSTANT, trt.LayerType.SHAPE}
    n = 0
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        meta = getattr(layer, "metadata", "") or ""
        if not (layer.name.startswith(mark) or mark in meta) or layer.type in skip:
            continue
        tensors = [layer.get_input(j) for j in range(layer.num_inputs)]
        outs = [layer.get_output(j) for j in range(layer.num_outputs)]
        if not any(t is not None and t.dtype in floats for t in (*tensors, *outs)):
            continue   # integer/bool layers keep their own precision
        layer.precision = trt.float32
        for j, t in enumerate(outs):
            if t.dtype in floats:
                layer.set_output_type(j, trt.float32)
        n += 1
    return n


def configure(trt, builder, network, req: BuildRequest):
    """The builder config of `req`: workspace, optimisation level, precision, profile.

    TF32 is cleared on every plan: TensorRT 10 enables it by default, and it would run the
    layers kept FP32 (head normalisation, decode, NMS, face_align's geometry) with a
    10-bit mantissa in their convolutions and matrix products.
    """
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, req.workspace_mb << 20)
    config.builder_optimization_level = req.opt_level
    config.clear_flag(trt.BuilderFlag.TF32)
    if req.precision.fp16:
        config.set_flag(trt.BuilderFlag.FP16)
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        pinned = _keep_fp32(trt, network, req.fp32_pattern.rstrip("*"))
        req.log(f"  {req.model}: FP16 with {pinned} layers pinned to FP32 "
                f"({len(req.precision.fp32_nodes)} ONNX nodes marked), TF32 off")
    else:
        req.log(f"  {req.model}: FP32 only, TF32 off")
    profile = builder.create_optimization_profile()
    for s in req.shapes.inputs:
        profile.set_shape(s.name, s.min, s.opt, s.max)
    config.add_optimization_profile(profile)
    return config


def build(req: BuildRequest) -> BuildOutput:
    trt = import_tensorrt()
    version = ".".join(trt.__version__.split(".")[:3])
    require_supported_tensorrt(version, "the tensorrt Python module")
    if req.device != 0:
        # TensorRT builds on the current CUDA device; choosing it is the environment's job here.
        raise EngineError(f"{req.model}: with the TensorRT Python API pick the GPU with "
                          f"CUDA_VISIBLE_DEVICES={req.device} (and --device 0), not --device {req.device}")
    logger = _make_logger(trt, req.log)
    builder = trt.Builder(logger)
    flags = 0 if int(version.split(".")[0]) >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(req.onnx)):
        errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BuildFailed(f"{req.model}: TensorRT's ONNX parser refused {req.onnx.name}: {errs}")
    config = configure(trt, builder, network, req)

    cache_bytes = req.timing_cache.read_bytes() if req.timing_cache.is_file() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, False)   # a foreign cache is an error, not silently ignored

    t0 = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BuildFailed(f"{req.model}: TensorRT could not build the network (see the tensorrt: lines above)")
    req.log(f"  {req.model}: engine built in {time.perf_counter() - t0:.1f} s")
    _save_timing_cache(trt, config, req)
    return BuildOutput(bytes(serialized), version, "tensorrt-python")


def _save_timing_cache(trt, config, req: BuildRequest) -> None:
    """Merge our timings with whatever another build saved meanwhile, then replace atomically."""
    ours = config.get_timing_cache()
    with target_lock(req.timing_cache, timeout_s=600):
        if req.timing_cache.is_file():
            theirs = config.create_timing_cache(req.timing_cache.read_bytes())
            ours.combine(theirs, True)
        place_bytes(bytes(ours.serialize()), req.timing_cache)
