"""Face compare bodies -> (image a, image b or a reference embedding), within the limits.

    multipart/form-data   file parts `a` and `b`; or `a` and a field `embedding` (base64)
    application/json      {"a": "<base64>", "b": "<base64>"} or {"a": ..., "embedding": ...}
    application/msgpack   {"a": <bin>, "b": <bin>} or {"a": <bin>, "embedding": <bin of the
                          little-endian float32> | a typed array | base64}

The embedding is what /v1/faces answers (gateway/compare.py reads every encoding of it).
Read with gateway/inputs.py's bounded reader and multipart parser; bodies over INLINE_BYTES
are parsed off the event loop. A missing input is 400 `missing_part` naming it.
"""
from __future__ import annotations

import base64
import binascii
from concurrent.futures import Executor
from dataclasses import dataclass

import ormsgpack
from starlette.requests import Request

from .admission import Reservation
from .errors import EmptyBody, InvalidPayload, MissingPart, UnsupportedMediaType
from .inputs import _json, _media_type, off_loop, parse_multipart, read_body
from .negotiation import MSGPACK, MSGPACK_ALIASES

IMAGES = ("a", "b")
EMBEDDING = "embedding"
NAMES = (*IMAGES, EMBEDDING)
MSGPACK_TYPES = (MSGPACK, *MSGPACK_ALIASES)
TYPES = ("multipart/form-data", "application/json", *MSGPACK_TYPES)


@dataclass
class Pair:
    images: list            # image bytes: [a, b], or [a] when `embedding` is given
    embedding: object       # the reference as sent (str, bytes, typed array, list), or None


async def read_pair(request: Request, *, max_bytes: int, pool: Executor,
                    reservation: Reservation) -> Pair:
    media = _media_type(request)
    if media not in TYPES:
        raise UnsupportedMediaType(
            f"content type {media!r} is not accepted by face compare; send multipart/form-data "
            'with parts "a" and "b" (or "a" and "embedding"), or the same keys in '
            "application/json (base64) or application/msgpack")
    body = await read_body(request, max_bytes)
    if not body:
        raise EmptyBody("the request body is empty; send images a and b")
    if media == "multipart/form-data":
        parts = await off_loop(pool, len(body), parse_multipart, body,
                               request.headers.get("content-type", ""), 2 * len(NAMES), NAMES)
        doc: dict = {}
        for name, data in parts:
            if name in doc:
                raise InvalidPayload(f"part {name!r} is given twice")
            doc[name] = bytes(data).decode("ascii", "replace") if name == EMBEDDING else data
    else:
        # the parsed document and the decoded images are held beside the body
        reservation.charge(2 * len(body), "its parsed document and decoded images")
        doc = await off_loop(pool, len(body), _document, body, media in MSGPACK_TYPES)
    return pair_of(doc)


def _document(body, packed: bool) -> dict:
    """A JSON or msgpack body's object, its base64 images decoded (JSON: always base64;
    msgpack: bin, or base64 strings)."""
    if packed:
        try:
            doc = ormsgpack.unpackb(bytes(body))
        except (ormsgpack.MsgpackDecodeError, ValueError) as exc:
            raise InvalidPayload(f"malformed msgpack: {exc}") from None
        if not isinstance(doc, dict):
            raise InvalidPayload("the msgpack body must be a map")
    else:
        doc = _json(body)
    out = {k: v for k, v in doc.items() if k == EMBEDDING}
    for name in IMAGES:
        value = doc.get(name)
        if isinstance(value, str):
            try:
                value = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise InvalidPayload(f"image {name!r}: invalid base64 ({exc})") from None
        elif value is not None and not (packed and isinstance(value, bytes)):
            raise InvalidPayload(f"image {name!r} must be a base64 string"
                                 + (" or bin" if packed else ""))
        if value is not None:
            out[name] = value
    return out


def pair_of(doc: dict) -> Pair:
    """Exactly one of `b` and `embedding` beside `a`; each image non-empty."""
    if "a" not in doc:
        raise MissingPart('image "a" is missing (multipart part "a", or the key "a")')
    if ("b" in doc) == (EMBEDDING in doc):
        raise MissingPart('give either image "b" or a reference "embedding" (not both)' if "b" in doc
                          else 'image "b" or a reference "embedding" is missing')
    images = [doc["a"]] + ([doc["b"]] if "b" in doc else [])
    for name, im in zip(IMAGES, images):
        if not len(im):
            raise EmptyBody(f"image {name!r} is empty")
    return Pair(images, doc.get(EMBEDDING))
