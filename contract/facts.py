"""Per-model serving facts, read from each model's config.pbtxt parameters.

A model states here, once, what the rest of the stack would otherwise keep in lists of
names: which gateway route serves it (and under which `?model=` choice), its default
score threshold, what the CPU profile must know about it, and how the GPU ceiling tool
builds it. Every list of models (the gateway's route table, perf's targets, the CPU
runtime and bf16 policy, test parametrisation, docs tables) is derived from these.

Parameters (strings, all optional):
  route                    gateway route(s) serving the model, comma-separated: "faces",
                           "detect", "embed/image", "embed/text", "ocr", "analyze",
                           "faces/compare" (path /v1/<route>)
  route_choice             its value of each route's `?model=` query (default: the model name)
  route_default            "true": its routes' default model (a one-model route needs none)
  default_score_threshold  results below it are not returned unless the client asks
                           (a `score_threshold` query may go down to the model's floor)
  cpu_prefer_runtime       onnxruntime: the cpu profile runs this graph in ONNX Runtime where
                           OpenVINO is the default; cpu_prefer_runtime_why says why (measured)
  cpu_f32_only             why this graph never runs in bf16 on the CPU ("" = it may)
  match_threshold          an embedder's cosine similarity at or above which two faces are the
                           same person (/v1/faces/compare's `match`; calibrated for the weights
                           the config is for: see docs/gateway.md, Face compare)
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
MATCH_THRESHOLD = "match_threshold"
# OpenVINO is the cpu profile's default: the one runtime a graph can prefer instead is ONNX Runtime
CPU_RUNTIMES = ("onnxruntime",)


@dataclass(frozen=True)
class ServingFacts:
    model: str
    routes: tuple[str, ...]
    choice: str
    route_default: bool
    default_threshold: float | None
    cpu_prefer_runtime: str | None
    cpu_prefer_runtime_why: str
    cpu_f32_only: str
    gpu_ceiling: str | None
    geometry_outputs: tuple[str, ...] = ()
    match_threshold: float | None = None

    @property
    def route(self) -> str | None:
        """The first route the model states (None: no route serves it)."""
        return self.routes[0] if self.routes else None


def facts(c: ModelContract) -> ServingFacts:
    """The model's serving facts; ContractError naming the parameter when one is malformed."""
    p = lambda key: c.parameter(key, "").strip()  # noqa: E731
    default = p(ROUTE_DEFAULT).lower()
    if default not in ("", "true", "false"):
        raise ContractError(f"{c.path}: {ROUTE_DEFAULT} must be true or false, got {default!r}")
    threshold = _number(c, DEFAULT_SCORE_THRESHOLD, 0.0, p(DEFAULT_SCORE_THRESHOLD))
    # a cosine similarity: [-1, 1]
    match = _number(c, MATCH_THRESHOLD, -1.0, p(MATCH_THRESHOLD))
    runtime = p(CPU_PREFER_RUNTIME) or None
    if runtime is not None and runtime not in CPU_RUNTIMES:
        raise ContractError(f"{c.path}: {CPU_PREFER_RUNTIME} must be one of {', '.join(CPU_RUNTIMES)}, "
                            f"got {runtime!r}")
    if runtime and not p(CPU_PREFER_RUNTIME_WHY):
        raise ContractError(f"{c.path}: {CPU_PREFER_RUNTIME} needs {CPU_PREFER_RUNTIME_WHY} (the measurement)")
    if p(ROUTE_CHOICE) and not p(ROUTE):
        raise ContractError(f"{c.path}: {ROUTE_CHOICE} without a {ROUTE}")
    routes = tuple(r.strip() for r in p(ROUTE).split(",") if r.strip())
    if len(set(routes)) != len(routes):
        raise ContractError(f"{c.path}: {ROUTE} names a route twice: {p(ROUTE)!r}")
    return ServingFacts(c.name, routes, p(ROUTE_CHOICE) or c.name, default == "true", threshold,
                        runtime, p(CPU_PREFER_RUNTIME_WHY), p(CPU_F32_ONLY), p(GPU_CEILING) or None,
                        geometry_outputs(c), match)


def _number(c: ModelContract, key: str, low: float, text: str) -> float | None:
    """A parameter that is a number in [low, 1], None when absent."""
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not low <= value <= 1.0:
        raise ContractError(f"{c.path}: {key} must be a number in [{low:g}, 1], got {text!r}")
    return value


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
