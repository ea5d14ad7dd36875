"""Face compare, the arithmetic: reference embeddings parsed and checked, the face chosen
in each image, the cosine similarity and the match against the contract's threshold.

Pure numpy, no I/O: the route (gateway/routes/compare.py) reads the body (gateway/pairs.py)
and calls Triton once; perf/face_pairs.py reuses `choose` and `cosine` on /v1/faces answers.
"""
from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

import numpy as np

from .errors import FaceIndexOutOfRange, InvalidEmbedding, NoFace

def embedding_from(value, dim: int) -> np.ndarray:
    """A reference embedding as /v1/faces answers it, in any of its encodings: base64 of
    little-endian float32 (JSON `embedding_format=base64`), the raw bytes (a msgpack bin), a
    msgpack typed array `{"dtype": "<f4", "shape": [D], "data": <bin>}`, or a list of numbers
    (JSON floats). -> float64 [dim]; 422 `invalid_embedding` for anything else."""
    if isinstance(value, dict):
        value = _typed_array(value, dim)
    if isinstance(value, str):
        # base64 of 4*dim bytes has 4*ceil(4*dim/3) characters: refuse longer before decoding
        if len(value) > 4 * -(-4 * dim // 3) + 4:
            raise InvalidEmbedding(f"embedding: {len(value)} base64 characters; {dim} float32 "
                                   f"are {4 * -(-4 * dim // 3)}")
        try:
            value = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InvalidEmbedding(f"embedding: invalid base64 ({exc})") from None
    if isinstance(value, list):
        if len(value) != dim or not all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                        for x in value):
            raise InvalidEmbedding(f"embedding: a list of {dim} numbers expected")
        try:
            vec = np.asarray(value, np.float64)
        except OverflowError:   # an integer beyond float64
            raise InvalidEmbedding("embedding: a number beyond float range") from None
    elif isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        if len(raw) % 4:
            raise InvalidEmbedding(f"embedding: {len(raw)} bytes is not a whole number of float32 "
                                   "(4 bytes each, little-endian)")
        if len(raw) != 4 * dim:
            raise InvalidEmbedding(f"embedding: {len(raw) // 4} float32, the model's embeddings "
                                   f"have {dim}")
        with np.errstate(invalid="ignore"):   # a signalling NaN: refused by `checked`
            vec = np.frombuffer(raw, "<f4").astype(np.float64)
    else:
        raise InvalidEmbedding("embedding: base64 of little-endian float32 expected")
    return checked(vec)


def _typed_array(value: dict, dim: int):
    if set(value) != {"dtype", "shape", "data"} or value["dtype"] != "<f4" \
            or value["shape"] != [dim] or not isinstance(value["data"], (bytes, bytearray)):
        raise InvalidEmbedding(f'embedding: a typed array {{"dtype": "<f4", "shape": [{dim}], '
                               '"data": <bin>} expected')
    return value["data"]


def checked(vec: np.ndarray) -> np.ndarray:
    """A usable embedding: finite, not the zero vector."""
    if not np.isfinite(vec).all():
        raise InvalidEmbedding("embedding: it holds NaN or infinity")
    if not vec.any():
        raise InvalidEmbedding("embedding: the zero vector has no direction to compare")
    return vec


def kept(count: int, scores: np.ndarray, threshold: float) -> int:
    """How many of an image's faces count: the valid rows scoring at least `threshold`
    (rows are sorted by score: they are the first ones, the faces /v1/faces answers)."""
    return int(np.count_nonzero(scores[:count] >= threshold))


def choose(boxes: np.ndarray, n: int, index: int | None, which: str) -> int:
    """The face to compare among the first `n` rows of `boxes` [K, 4] (x1, y1, x2, y2):
    `index` when given, else the largest by box area (the first of equals)."""
    if n == 0:
        raise NoFace(f"no face found in image {which!r}")
    if index is not None:
        if not 0 <= index < n:
            raise FaceIndexOutOfRange(f"face_{which}={index}: image {which!r} has {n} face"
                                      f"{'s' if n != 1 else ''} (indexes 0 to {n - 1})")
        return index
    b = boxes[:n]
    area = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    return int(np.argmax(area))


def cosine(u: np.ndarray, v: np.ndarray) -> float:
    """Cosine similarity in [-1, 1] (float64; a zero vector gives 0). Each vector is first
    divided by its largest magnitude: finite float32 values near 3.4e38 (or subnormal ones)
    would overflow (underflow) the norms, and the cosine does not depend on the scale."""
    u, v = (_scaled(np.asarray(x, np.float64)) for x in (u, v))
    den = np.linalg.norm(u) * np.linalg.norm(v)
    return float(np.clip(u @ v / den, -1.0, 1.0)) if den > 0 else 0.0


def _scaled(x: np.ndarray) -> np.ndarray:
    top = np.abs(x).max() if x.size else 0.0
    return x / top if top > 0 else x


@dataclass(frozen=True)
class Threshold:
    """The match threshold and where it comes from (contract: RouteTable.match_threshold)."""
    value: float
    stated_by: str                    # the model whose config.pbtxt states it
    weights_provenance: str | None    # of that model's served weights

    @property
    def synthetic(self) -> bool:
        return (self.weights_provenance or "").startswith("synthetic")

    def describe(self) -> dict:
        return {"value": self.value, "stated_by": self.stated_by,
                "weights_provenance": self.weights_provenance,
                "synthetic_weights": self.synthetic}


def verdict(similarity: float, threshold: Threshold) -> dict:
    return {"similarity": round(similarity, 6), "match": similarity >= threshold.value,
            "threshold": threshold.describe()}
