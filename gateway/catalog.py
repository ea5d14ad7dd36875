"""What a Triton endpoint serves, learned from it and held against the committed contract.

The gateway never restates a shape: frame sizes, tensor names and batch limits come
from Triton's model metadata; `config.pbtxt` (contract) is what they must
match. A mismatch is a deployment bug: that endpoint is refused (gateway/fleet.py), loudly.
Each endpoint has its own catalog; `merge` is what the routes see.
"""
from __future__ import annotations

import asyncio
import functools
from dataclasses import dataclass, field
from pathlib import Path

import contract
from contract import encoded
from contract.routes import RouteTable
from contract.routes import route_table as _route_table

from .backend import Backend
from .errors import ContractMismatch, ModelUnavailable

# Config parameters that filter scores inside a model: a threshold below them cannot
# return more (score_threshold of the detectors' in-graph NMS, text_score of the OCR
# pipeline's recognition).
FLOOR_PARAMETERS = ("score_threshold", "text_score")


@dataclass(frozen=True)
class TensorInfo:
    name: str
    datatype: str            # Triton spelling: UINT8, FP32, BYTES
    shape: tuple[int, ...]   # without the batch dimension


@dataclass(frozen=True)
class ModelInfo:
    name: str
    platform: str
    max_batch_size: int
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    parameters: dict = field(default_factory=dict)
    # dynamic_batching.default_queue_policy: may a request set its own queue timeout, and
    # the model's own (0: none)
    timeout_override: bool = False
    queue_timeout_us: int = 0

    def triton_timeout_us(self, remaining_s: float) -> int | None:
        """Triton's per-request `timeout` for a call with `remaining_s` left: the deadline,
        capped by the model's own queue timeout (the operator's load-shedding policy stays
        in force). None where the queue policy does not allow the override. Triton 2.51
        enforces an override only when the model has a default timeout (checked here)."""
        if not self.timeout_override:
            return None
        us = max(1, int(remaining_s * 1e6))
        return min(us, self.queue_timeout_us) if self.queue_timeout_us else us

    @property
    def queue_timeout_s(self) -> float | None:
        return self.queue_timeout_us / 1e6 if self.queue_timeout_us else None

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.outputs)

    def rows(self, output: str) -> int:
        """K: the padded rows per image of a [K, ...] output (its most results)."""
        return next(t.shape[0] for t in self.outputs if t.name == output)

    @property
    def frame(self) -> tuple[int, int] | None:
        """(height, width) of an image input [H, W, 3], or None for text models."""
        shape = self.inputs[0].shape
        return (shape[0], shape[1]) if len(shape) == 3 and shape[2] == 3 else None

    @property
    def weights_provenance(self) -> str | None:
        return self.parameters.get("weights_provenance")


@functools.lru_cache(maxsize=8)
def route_table(repository: Path) -> RouteTable:
    """The routes and the models they call, from the contract's `route*` parameters
    (contract/routes.py); read once per repository. Their tensors, frame sizes, result
    counts (K) and score floors come from Triton's metadata and config."""
    return _route_table(Path(repository))


def route_models(repository: Path) -> tuple[str, ...]:
    return route_table(Path(repository)).models


def cpu_runtime(parameters: dict) -> dict | None:
    """What a CPU-profile model runs with (serving/profiles.py records it), None elsewhere."""
    if "cpu_runtime" not in parameters:
        return None
    keys = ("cpu_runtime", "cpu_precision", "cpu_threads", "cpu_slots", "cpu_fallback")
    return {k.removeprefix("cpu_"): parameters[k] for k in keys if k in parameters}


class Catalog:
    """Route models Triton serves (checked), and the ones it does not (503 on use)."""

    def __init__(self, models: dict[str, ModelInfo], missing: tuple[str, ...] = (),
                 provenance: dict[str, str | None] | None = None,
                 steps: dict[str, tuple[str, ...]] | None = None,
                 runtimes: dict[str, dict | None] | None = None,
                 configs: dict[str, dict] | None = None,
                 entries: dict[str, ModelInfo] | None = None):
        self.models = models
        self.missing = missing
        self.provenance = provenance or {}   # route models and their steps -> provenance
        self.steps = steps or {}             # pipeline -> the models it calls
        self.runtimes = runtimes or {}       # route models and their steps -> CPU runtime (cpu profile)
        self.configs = configs or {}         # route models and their steps -> Triton config
        self.entries = entries or {}         # route model -> its encoded entry point (checked)
        self._floors: dict[tuple[str, str], tuple[float, str] | None] = {}

    def score_floor(self, model: str, output: str = "scores") -> tuple[float, str] | None:
        """(floor, model that applies it) for the scores in `output` of `model`: the
        model's own floor parameter, else that of the ensemble step whose output it is,
        else that of the first pipeline step with such an output; None: no floor.
        Worked out once per catalog (a catalog is never changed: a new one replaces it)."""
        key = (model, output)
        if key not in self._floors:
            self._floors[key] = self._score_floor(model, output)
        return self._floors[key]

    def _score_floor(self, model: str, output: str) -> tuple[float, str] | None:
        cfg = self.configs.get(model, {})
        params = cfg.get("parameters", {})
        for key in FLOOR_PARAMETERS:
            value = params.get(key, {}).get("string_value")
            if value:
                return float(value), model
        for step in cfg.get("ensemble_scheduling", {}).get("step", []):
            for inner, outer in step.get("output_map", {}).items():
                if outer == output:
                    return self.score_floor(step["model_name"], inner)
        for step in self.steps.get(model, ()):
            outputs = {o.get("name") for o in self.configs.get(step, {}).get("output", [])}
            if output in outputs:
                return self.score_floor(step, output)
        return None

    def components(self, name: str) -> list[str]:
        """All models a pipeline runs, depth first (analyze -> faces -> scrfd, ...)."""
        out: list[str] = []
        for step in self.steps.get(name, ()):
            if step not in out:
                out.append(step)
                out.extend(c for c in self.components(step) if c not in out)
        return out

    def find(self, name: str) -> ModelInfo | None:
        """A route model's info, or an encoded entry point's (by its name); None."""
        info = self.models.get(name)
        if info is None:
            info = next((e for e in self.entries.values() if e.name == name), None)
        return info

    def get(self, name: str) -> ModelInfo:
        info = self.find(name)
        if info is None:
            raise ModelUnavailable(f"model {name!r} is not served by this Triton "
                                   "(not in its repository)")
        return info

    @classmethod
    async def learn(cls, backend: Backend, repository: Path, entries: bool = False) -> "Catalog":
        """Ask Triton for each route model (the repository index is an admin API that a
        hardened Triton restricts); models it does not know are left out, not fatal.
        `entries`: also each served model's encoded entry point where the contract gives
        it one (contract/encoded.py), held to the tensors the rule expects."""
        async def ask(name):   # every model at once: a probe is one round trip, not seven
            try:
                return name, await backend.metadata(name), await backend.config(name)
            except ModelUnavailable:
                return name, None, None

        names = route_models(repository)
        wanted = expected_entries(repository, names) if entries else {}
        answers = await asyncio.gather(*(ask(n) for n in (*names, *(w.name for w in wanted.values()))))
        models, missing, configs = {}, [], {}
        for name, meta, config in answers[:len(names)]:
            if meta is None:
                missing.append(name)
                continue
            configs[name] = config
            info = from_triton(meta, config)
            check(info, contract.load(name, repository))
            models[name] = info
        learned = {}
        for model, (_, meta, config) in zip(wanted, answers[len(names):]):
            if meta is not None and model in models:
                learned[model] = from_triton(meta, config)
                check(learned[model], wanted[model])
        steps: dict[str, tuple[str, ...]] = {}
        todo = list(configs)
        while todo:   # the models pipelines run, for their weights' provenance
            name = todo.pop()
            steps[name] = contract.from_json(configs[name]).steps if configs[name] else ()
            for step in steps[name]:
                if step not in configs:
                    try:
                        configs[step] = await backend.config(step)
                    except ModelUnavailable:
                        configs[step] = {}
                    todo.append(step)
        params = {n: {k: v.get("string_value", "") for k, v in c.get("parameters", {}).items()}
                  for n, c in configs.items()}
        provenance = {n: p.get("weights_provenance") for n, p in params.items()}
        runtimes = {n: cpu_runtime(p) for n, p in params.items()}
        return cls(models, tuple(missing), provenance, steps, runtimes, configs, learned)


def expected_entries(repository: Path, models) -> dict[str, contract.ModelContract]:
    """{route model: what its `<model>_encoded` must declare} for the models the contract's
    rule gives an entry point (contract/encoded.py). A served entry point that contradicts
    it raises ContractMismatch (a deployment bug, as for the models themselves)."""
    out = {}
    for name in models:
        c = contract.load(name, repository)
        if encoded.has_entry(c):
            out[name] = encoded.entry_contract(c)
    return out


def from_triton(metadata: dict, config: dict) -> ModelInfo:
    """ModelInfo from Triton's JSON metadata/config (gRPC JSON writes int64 as strings)."""
    mbs = int(config.get("max_batch_size", 0))

    def tensors(items):
        out = []
        for t in items:
            shape = tuple(int(d) for d in t.get("shape", ()))
            out.append(TensorInfo(t["name"], t["datatype"], shape[1:] if mbs > 0 else shape))
        return tuple(out)

    params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
    policy = config.get("dynamic_batching", {}).get("default_queue_policy", {})
    return ModelInfo(metadata["name"], metadata.get("platform", config.get("backend", "")),
                     mbs, tensors(metadata.get("inputs", [])), tensors(metadata.get("outputs", [])),
                     params, bool(policy.get("allow_timeout_override", False)),
                     int(policy.get("default_timeout_microseconds", 0)))


def check(info: ModelInfo, want: contract.ModelContract) -> None:
    """Tensor names, dtypes and dims must equal the contract; batching must be on."""
    problems = []
    if info.max_batch_size <= 0:
        problems.append("batching is disabled (max_batch_size 0)")
    for kind, got, spec in (("input", info.inputs, want.inputs),
                            ("output", info.outputs, want.outputs)):
        got_by = {t.name: t for t in got}
        for s in spec:
            t = got_by.get(s.name)
            if t is None:
                problems.append(f"{kind} {s.name!r} is missing")
            elif (t.datatype, t.shape) != (s.triton_dtype, s.dims):
                problems.append(f"{kind} {s.name!r} is {t.datatype}{list(t.shape)}, "
                                f"contract says {s.triton_dtype}{list(s.dims)}")
    if problems:
        raise ContractMismatch(f"Triton's model {info.name!r} does not match {want.path}: "
                               + "; ".join(problems))


def merge(catalogs: list[Catalog]) -> Catalog | None:
    """The catalog the routes see over several endpoints: every route model some endpoint
    serves; where endpoints differ on a model's batch limit the smallest wins (a chunk
    must fit whichever endpoint takes it). None when there is no catalog."""
    if not catalogs:
        return None
    if len(catalogs) == 1:
        return catalogs[0]
    models: dict[str, ModelInfo] = {}
    provenance: dict[str, str | None] = {}
    steps: dict[str, tuple[str, ...]] = {}
    runtimes: dict[str, dict | None] = {}
    configs: dict[str, dict] = {}
    entries: dict[str, ModelInfo] = {}
    for cat in catalogs:
        for name, info in cat.models.items():
            if name not in models or info.max_batch_size < models[name].max_batch_size:
                models[name] = info
        for name, info in cat.entries.items():
            if name not in entries or info.max_batch_size < entries[name].max_batch_size:
                entries[name] = info
        provenance = {**cat.provenance, **provenance}
        steps = {**cat.steps, **steps}
        runtimes = {**cat.runtimes, **runtimes}
        configs = {**cat.configs, **configs}
    wanted = dict.fromkeys(m for cat in catalogs for m in (*cat.models, *cat.missing))
    missing = tuple(m for m in wanted if m not in models)
    return Catalog(models, missing, provenance, steps, runtimes, configs, entries)
