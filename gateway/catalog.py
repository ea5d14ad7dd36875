"""What Triton serves, learned at start-up and held against the committed contract.

The gateway never restates a shape: frame sizes, tensor names and batch limits come
from Triton's model metadata; `config.pbtxt` (serving.contract) is what they must
match. A mismatch is a deployment bug: start-up fails with ContractMismatch.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from serving import contract

from .backend import Backend
from .errors import ContractMismatch, ModelUnavailable

# Endpoint models and the tensors each route reads. Frame sizes are NOT here.
ROUTE_MODELS = {
    "faces": ("images", ("boxes", "scores", "landmarks", "embeddings", "num_faces")),
    "yolo": ("images", ("boxes", "scores", "classes", "num_detections")),
    "centernet": ("images", ("boxes", "scores", "classes", "num_detections")),
    "mobileclip_image": ("images", ("embeddings",)),
    "text_embed": ("text", ("embeddings",)),
    "ocr": ("images", ("texts", "polygons", "scores", "num_lines")),
    "analyze": ("images", (
        "object_boxes", "object_scores", "object_classes", "num_objects",
        "face_boxes", "face_scores", "face_landmarks", "face_embeddings", "num_faces",
        "texts", "text_polygons", "text_scores", "num_lines", "image_embedding")),
}


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

    @property
    def frame(self) -> tuple[int, int] | None:
        """(height, width) of an image input [H, W, 3], or None for text models."""
        shape = self.inputs[0].shape
        return (shape[0], shape[1]) if len(shape) == 3 and shape[2] == 3 else None

    @property
    def weights_provenance(self) -> str | None:
        return self.parameters.get("weights_provenance")


class Catalog:
    """Route models Triton serves (checked), and the ones it does not (503 on use)."""

    def __init__(self, models: dict[str, ModelInfo], missing: tuple[str, ...] = (),
                 provenance: dict[str, str | None] | None = None,
                 steps: dict[str, tuple[str, ...]] | None = None):
        self.models = models
        self.missing = missing
        self.provenance = provenance or {}   # route models and their steps -> provenance
        self.steps = steps or {}             # pipeline -> the models it calls

    def components(self, name: str) -> list[str]:
        """All models a pipeline runs, depth first (analyze -> faces -> scrfd, ...)."""
        out: list[str] = []
        for step in self.steps.get(name, ()):
            if step not in out:
                out.append(step)
                out.extend(c for c in self.components(step) if c not in out)
        return out

    def get(self, name: str) -> ModelInfo:
        try:
            return self.models[name]
        except KeyError:
            raise ModelUnavailable(f"model {name!r} is not served by this Triton "
                                   "(not in its repository)") from None

    @classmethod
    async def learn(cls, backend: Backend, repository: Path) -> "Catalog":
        """Ask Triton for each route model (the repository index is an admin API that a
        hardened Triton restricts); models it does not know are left out, not fatal."""
        models, missing, configs = {}, [], {}
        for name in ROUTE_MODELS:
            try:
                meta = await backend.metadata(name)
            except ModelUnavailable:
                missing.append(name)
                continue
            configs[name] = await backend.config(name)
            info = from_triton(meta, configs[name])
            check(info, contract.load(name, repository))
            models[name] = info
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
        provenance = {n: c.get("parameters", {}).get("weights_provenance", {}).get("string_value")
                      for n, c in configs.items()}
        return cls(models, tuple(missing), provenance, steps)


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
    return ModelInfo(metadata["name"], metadata.get("platform", config.get("backend", "")),
                     mbs, tensors(metadata.get("inputs", [])), tensors(metadata.get("outputs", [])),
                     params)


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
