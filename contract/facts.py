"""Per-model serving facts, read from each model's config.pbtxt parameters.

A model states here, once, what the rest of the stack would otherwise keep in lists of
names: which gateway route serves it (and under which `?model=` choice), its default
score threshold, what the CPU profile must know about it, and how the GPU ceiling tool
builds it. Every list of models (the gateway's route table, perf's targets, the CPU
runtime and bf16 policy, test parametrisation, docs tables) is derived from these.

Parameters (strings, all optional):
  route                    gateway route serving the model: "faces", "detect", "embed/image",
                           "embed/text", "ocr", "analyze" (path /v1/<route>)
  route_choice             its value of the route's `?model=` query (default: the model name)
  route_default            "true": the route's default model (a one-model route needs none)
  default_score_threshold  results below it are not returned unless the client asks
                           (a `score_threshold` query may go down to the model's floor)
  cpu_prefer_runtime       onnxruntime: the cpu profile runs this graph in ONNX Runtime where
                           OpenVINO is the default; cpu_prefer_runtime_why says why (measured)
  cpu_f32_only             why this graph never runs in bf16 on the CPU ("" = it may)
  gpu_ceiling              the torch builder perf/ceiling_models.py times for this network
                           (absent: the exported ONNX graph in ONNX Runtime's GPU providers)
  geometry_outputs         the outputs in input-frame pixels, comma-separated
                           ("boxes,landmarks"): FP32 tensors whose last dim holds interleaved
                           x,y pairs (boxes x1,y1,x2,y2 [K,4], landmarks [K,5,2], polygons
                           [K,4,2]). The encoded entry point (contract/encoded.py) maps exactly
                           these back to the original image's pixels; absent: none
"""
from __future__ import annotations

from dataclasses import dataclass

from . import ContractError, ModelContract

ROUTE = "route"
ROUTE_CHOICE = "route_choice"
ROUTE_DEFAULT = "route_default"
DEFAULT_SCORE_THRESHOLD = "default_score_threshold"
CPU_PREFER_RUNTIME = "cpu_prefer_runtime"
CPU_PREFER_RUNTIME_WHY = "cpu_prefer_runtime_why"
CPU_F32_ONLY = "cpu_f32_only"
GPU_CEILING = "gpu_ceiling"
GEOMETRY_OUTPUTS = "geometry_outputs"
# OpenVINO is the cpu profile's default: the one runtime a graph can prefer instead is ONNX Runtime
CPU_RUNTIMES = ("onnxruntime",)


@dataclass(frozen=True)
class ServingFacts:
    model: str
    route: str | None
    choice: str
    route_default: bool
    default_threshold: float | None
    cpu_prefer_runtime: str | None
    cpu_prefer_runtime_why: str
    cpu_f32_only: str
    gpu_ceiling: str | None
    geometry_outputs: tuple[str, ...] = ()


def facts(c: ModelContract) -> ServingFacts:
    """The model's serving facts; ContractError naming the parameter when one is malformed."""
    p = lambda key: c.parameter(key, "").strip()  # noqa: E731
    default = p(ROUTE_DEFAULT).lower()
    if default not in ("", "true", "false"):
        raise ContractError(f"{c.path}: {ROUTE_DEFAULT} must be true or false, got {default!r}")
    threshold = None
    if p(DEFAULT_SCORE_THRESHOLD):
        try:
            threshold = float(p(DEFAULT_SCORE_THRESHOLD))
        except ValueError:
            threshold = -1.0
        if not 0.0 <= threshold <= 1.0:
            raise ContractError(f"{c.path}: {DEFAULT_SCORE_THRESHOLD} must be a number in [0, 1], "
                                f"got {p(DEFAULT_SCORE_THRESHOLD)!r}")
    runtime = p(CPU_PREFER_RUNTIME) or None
    if runtime is not None and runtime not in CPU_RUNTIMES:
        raise ContractError(f"{c.path}: {CPU_PREFER_RUNTIME} must be one of {', '.join(CPU_RUNTIMES)}, "
                            f"got {runtime!r}")
    if runtime and not p(CPU_PREFER_RUNTIME_WHY):
        raise ContractError(f"{c.path}: {CPU_PREFER_RUNTIME} needs {CPU_PREFER_RUNTIME_WHY} (the measurement)")
    if p(ROUTE_CHOICE) and not p(ROUTE):
        raise ContractError(f"{c.path}: {ROUTE_CHOICE} without a {ROUTE}")
    return ServingFacts(c.name, p(ROUTE) or None, p(ROUTE_CHOICE) or c.name, default == "true", threshold,
                        runtime, p(CPU_PREFER_RUNTIME_WHY), p(CPU_F32_ONLY), p(GPU_CEILING) or None,
                        geometry_outputs(c))


def geometry_outputs(c: ModelContract) -> tuple[str, ...]:
    """The model's outputs in frame pixels (GEOMETRY_OUTPUTS); ContractError when one is not
    an FP32 output of the model with x,y pairs in its last dim."""
    names = tuple(n.strip() for n in c.parameter(GEOMETRY_OUTPUTS, "").split(",") if n.strip())
    outputs = {o.name: o for o in c.outputs}
    for n in names:
        o = outputs.get(n)
        if o is None or o.triton_dtype != "FP32" or not o.dims or o.dims[-1] < 2 or o.dims[-1] % 2:
            raise ContractError(f"{c.path}: {GEOMETRY_OUTPUTS} names {n!r}, which is not an FP32 output "
                                "whose last dim holds x,y pairs")
    if len(set(names)) != len(names):
        raise ContractError(f"{c.path}: {GEOMETRY_OUTPUTS} names an output twice ({', '.join(names)})")
    return names


def pipelines(contracts: dict[str, ModelContract]) -> tuple[str, ...]:
    """Models that call other models (ensembles, BLS pipelines): what load generators
    measure by default."""
    return tuple(n for n, c in contracts.items() if c.steps)


def networks(contracts: dict[str, ModelContract]) -> tuple[str, ...]:
    """Models that are one exported graph each."""
    return tuple(n for n, c in contracts.items() if c.kind == "network")


def bf16_eligible(contracts: dict[str, ModelContract]) -> tuple[str, ...]:
    """Networks the CPU profile may run in bf16 (the rest state cpu_f32_only and why)."""
    return tuple(n for n in networks(contracts) if not facts(contracts[n]).cpu_f32_only)
