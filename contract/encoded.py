"""Encoded entry points: which models a client may call with JPEG/PNG bytes, and their names.

One rule, read from the contract (no list of models): a model gets `<model>_encoded` when
its ONLY input is a letterboxed frame `images` uint8 [H, W, 3] (fixed H, W) and clients call
it: a gateway route serves it (contract/facts.py `route`) or it is a pipeline (an ensemble
or BLS model with `steps`: detect_embed, analyze). Steps that only pipelines call (scrfd,
clip_resize, ppocr_det, face_align) get none.

The entry point's input is `image` (TYPE_STRING [1]: one JPEG or PNG file per batch item);
its outputs are the model's, with every output its config names in `geometry_outputs`
mapped to the original image's pixels (after EXIF orientation), plus `original_size`
INT32 [2] (width, height). serving/encoded.py builds them into every derived repository.
"""
from __future__ import annotations

from pathlib import Path

from . import MODEL_REPOSITORY, ContractError, ModelContract, load, mc
from .facts import facts

SUFFIX = "_encoded"
INPUT = "image"                  # TYPE_STRING [1]: the client's JPEG/PNG bytes
FRAMES = "images"                # the model's letterboxed uint8 [H, W, 3] input
ORIGINAL_SIZE = "original_size"  # INT32 [2]: the original image's width, height (oriented)


def entry_name(model: str) -> str:
    return model + SUFFIX


def takes_files(spec) -> bool:
    """Whether an input spec (contract.TensorSpec) is an entry point's `image`: JPEG/PNG files."""
    return spec.name == INPUT and spec.triton_dtype in ("BYTES", "STRING")


def frame(c: ModelContract) -> tuple[int, int] | None:
    """(height, width) of the model's only input when it is a letterboxed uint8 frame."""
    if len(c.inputs) != 1:
        return None
    t = c.inputs[0]
    if t.name != FRAMES or t.triton_dtype != "UINT8" or len(t.dims) != 3 or t.dims[2] != 3 \
            or min(t.dims) <= 0:
        return None
    return t.dims[0], t.dims[1]


def has_entry(c: ModelContract) -> bool:
    return frame(c) is not None and (facts(c).route is not None or bool(c.steps))


def entry_models(contracts: dict[str, ModelContract]) -> tuple[str, ...]:
    """The models that get an encoded entry point, sorted."""
    return tuple(sorted(n for n, c in contracts.items() if has_entry(c)))


def entry_contract(c: ModelContract) -> ModelContract:
    """What `<model>_encoded` must declare, from the model's contract: the input `image`
    STRING [1], the model's outputs (same names, dtypes, dims; geometric ones in original
    pixels) plus `original_size` INT32 [2], the model's batch limit. The gateway holds a
    Triton endpoint's entry point to it; serving/encoded.py generates entries that match."""
    cfg = mc.ModelConfig(name=entry_name(c.name), platform="ensemble", max_batch_size=c.max_batch_size)
    cfg.input.add(name=INPUT, data_type=mc.TYPE_STRING, dims=[1])
    for o in c.config.output:
        cfg.output.add(name=o.name, data_type=o.data_type, dims=o.dims)
    cfg.output.add(name=ORIGINAL_SIZE, data_type=mc.TYPE_INT32, dims=[2])
    return ModelContract(cfg.name, c.path, cfg)


def load_any(name: str, repository: Path = MODEL_REPOSITORY) -> ModelContract:
    """`name`'s contract from `repository`; `<model>_encoded`, which only derived
    repositories hold, as entry_contract of its model's (the tools that take a model name,
    e.g. perf.analyzer, read the committed repository)."""
    try:
        return load(name, repository)
    except ContractError:
        base = name.removesuffix(SUFFIX)
        if base == name:
            raise
        c = load(base, repository)
        if not has_entry(c):
            raise ContractError(f"{base} has no encoded entry point (contract/encoded.py's rule)") from None
        return entry_contract(c)
