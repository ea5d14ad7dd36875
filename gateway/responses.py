"""Answers in three encodings of the same content, each rendered by one C serialiser.

A route builds its content once per request with `vectors(rows)`: the function that turns
a [M, ...] array of model vectors (embeddings) into M leaves, batched, never a loop over
floats. Everything else (scores, rounded boxes, labels, sizes) is the same Python value in
every encoding.

- `JSON_FLOAT` (`application/json`, the default): a vector is a list of numbers, each the
  exact float32 value (orjson prints the double it widens to).
- `JSON_BASE64` (`?embedding_format=base64`): a vector is the standard base64 (RFC 4648,
  with padding) of its little-endian float32 bytes; 512-d: a 2,732-character string.
- `MSGPACK` (`Accept: application/msgpack`): a vector is a typed array, a map
  `{"dtype": "<f4", "shape": [512], "data": <bin 2048>}`: little-endian bytes (`"<f4"`
  float32, `"<i4"` int32, numpy's array-interface type string) and the shape. A plain map
  with a bin rather than a msgpack extension type: every msgpack library decodes it with
  its default settings (an ext type needs a decoder registered in each client), and it
  reads like the JSON answer. Other numbers are msgpack ints and float64s: the same values
  the JSON answer holds, exactly.

Errors are never encoded here: they are JSON whatever the Accept header (gateway/app.py).
"""
from __future__ import annotations

import binascii
from dataclasses import dataclass
from typing import Callable

import numpy as np
import orjson
import ormsgpack
from starlette.responses import Response

from .negotiation import JSON as JSON_TYPE, MSGPACK, MSGPACK_ALIASES


def dumps(content) -> bytes:
    return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


def packb(content) -> bytes:
    return ormsgpack.packb(content, option=ormsgpack.OPT_SERIALIZE_NUMPY)


class JSON(Response):
    """A JSON answer (probes, listings, every error)."""
    media_type = JSON_TYPE

    def render(self, content) -> bytes:
        return dumps(content)


# ---- vectors: [M, ...] -> M leaves ------------------------------------------------------

def _little_endian(rows: np.ndarray) -> np.ndarray:
    """rows as contiguous little-endian float32 (floats) or int32 (integers)."""
    a = np.asarray(rows)
    if a.dtype.kind == "f":
        return np.ascontiguousarray(a, dtype="<f4")
    if a.dtype.kind in "iub":
        return np.ascontiguousarray(a, dtype="<i4")
    raise TypeError(f"no typed-array encoding for dtype {a.dtype}")


def float_vectors(rows: np.ndarray) -> list:
    return np.asarray(rows).tolist()


def base64_vectors(rows: np.ndarray) -> list[str]:
    """Per row the base64 of its little-endian bytes: every row zero-padded to whole 3-byte
    groups so ONE base64 call encodes them all with row boundaries on group boundaries; the
    characters that encode the padding then become '='."""
    a = _little_endian(rows)
    m, n = len(a), (a[0].nbytes if len(a) else 0)
    if m == 0 or n == 0:
        return [""] * m
    raw = a.reshape(m, -1).view(np.uint8)
    groups = -(-n // 3)
    padded = np.zeros((m, groups * 3), np.uint8)
    padded[:, :n] = raw
    text = np.frombuffer(binascii.b2a_base64(padded.tobytes(), newline=False), np.uint8)
    text = text.reshape(m, groups * 4).copy()
    pad = (3 - n % 3) % 3
    if pad:
        text[:, -pad:] = ord("=")
    return list(map(bytes.decode, text.view(f"S{groups * 4}")[:, 0].tolist()))


def typed_vectors(rows: np.ndarray) -> list[dict]:
    """Per row a typed array {"dtype", "shape", "data"}: the bytes of all rows cut in one
    numpy view (a row is one fixed-size void item, whose tolist() is its bytes)."""
    a = _little_endian(rows)
    m = len(a)
    shape = list(a.shape[1:])
    dtype = a.dtype.str
    size = a[0].nbytes if m else 0
    blobs = a.reshape(m, -1).view(f"V{size}")[:, 0].tolist() if m and size else [b""] * m
    return [{"dtype": dtype, "shape": shape, "data": b} for b in blobs]


# ---- the three encodings --------------------------------------------------------------

@dataclass(frozen=True)
class Answer:
    name: str                                   # json | json+base64 | msgpack (bench, tests)
    media_type: str                             # the Content-Type it answers with
    vectors: Callable[[np.ndarray], list]
    serialise: Callable[[object], bytes]

    def dumps(self, content) -> bytes:
        return self.serialise(content)

    def rendered(self, body: bytes, status_code: int = 200) -> Response:
        """An answer already serialised (in the pool, for big ones). Vary: the format
        follows the Accept header, so a cache must not hand one client's to another."""
        return Response(body, status_code=status_code, media_type=self.media_type,
                        headers={"Vary": "Accept"})

    def response(self, content, status_code: int = 200, headers: dict | None = None) -> Response:
        r = self.rendered(self.dumps(content), status_code)
        r.headers.update(headers or {})
        return r

    def with_embeddings(self, embedding_format: str) -> "Answer":
        """`?embedding_format=`: base64 vectors in a JSON answer; msgpack's are binary always."""
        return JSON_BASE64 if self is JSON_FLOAT and embedding_format == "base64" else self


JSON_FLOAT = Answer("json", JSON_TYPE, float_vectors, dumps)
JSON_BASE64 = Answer("json+base64", JSON_TYPE, base64_vectors, dumps)
MSGPACK_ANSWER = Answer("msgpack", MSGPACK, typed_vectors, packb)
FORMATS = (JSON_FLOAT, JSON_BASE64, MSGPACK_ANSWER)


_BY_TYPE = {JSON_TYPE: JSON_FLOAT, MSGPACK: MSGPACK_ANSWER,
            # an alias is answered under the name the client asked for
            **{t: Answer("msgpack", t, typed_vectors, packb) for t in MSGPACK_ALIASES}}


def answer_for(media_type: str) -> Answer:
    """The encoding of a negotiated media type (gateway/negotiation.py: OFFERED)."""
    return _BY_TYPE[media_type]
