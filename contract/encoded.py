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

from . import ModelContract
from .facts import facts

SUFFIX = "_encoded"
INPUT = "image"                  # TYPE_STRING [1]: the client's JPEG/PNG bytes
FRAMES = "images"                # the model's letterboxed uint8 [H, W, 3] input
ORIGINAL_SIZE = "original_size"  # INT32 [2]: the original image's width, height (oriented)


def entry_name(model: str) -> str:
    return model + SUFFIX


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
