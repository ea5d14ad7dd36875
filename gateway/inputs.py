"""Request bodies -> image bytes (or texts), within the limits, in memory.

Accepted: a raw body (image/jpeg, image/png, application/octet-stream), multipart
form-data (every file part is an image, in order) or JSON
(`{"image": "<base64>"}` / `{"images": [...]}`). The image format itself is judged
from the magic bytes later, not from the declared type.

The body is read into one buffer that grows as the body arrives (never sized from
Content-Length up front: a client announcing 32 MiB and sending nothing would hold it);
the admission middleware charges the memory budget for each chunk as it arrives, bounds
its size and the time it may take. Multipart parts are slices of that buffer, never copies and never spooled to
a temporary file (Starlette's parser writes parts over 1 MiB to one: /tmp is a small
emptyDir in the deployments). Multipart and JSON bodies over `INLINE_BYTES` are parsed
(and JSON's base64 decoded) in the bounded pool, off the event loop; the multipart
parser stops at the first part, header or boundary over its bounds (below).
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import logging
from concurrent.futures import Executor

import orjson
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, MultipartState, parse_options_header
from starlette.requests import Request

from .admission import Reservation
from .errors import (EmptyBody, InvalidPayload, InvalidText, PayloadTooLarge, TooManyImages,
                     UnsupportedMediaType)

# python-multipart logs a warning per malformed body: a client's mistake, answered 400,
# never a log line an anonymous client can flood
logging.getLogger("python_multipart").setLevel(logging.ERROR)
RAW_TYPES = ("image/jpeg", "image/jpg", "image/png", "application/octet-stream", "")
# Bodies up to this size are parsed inline: a thread hop costs more than parsing them.
INLINE_BYTES = 64 * 1024
# Multipart bounds: headers per part, bytes per part header line, parts that are not
# files (ignored, but each costs parser work), and the boundary (RFC 2046: at most 70).
MAX_PART_HEADERS = 16
MAX_PART_HEADER_BYTES = 4096
MAX_FIELD_PARTS = 16
MAX_BOUNDARY = 70


async def read_body(request: Request, limit: int) -> bytearray:
    """The body in one buffer; over `limit` is a 413 (the middleware also stops it
    while streaming, before the budget is exceeded)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"body of {declared} bytes exceeds the limit of {limit}")
    body = bytearray()
    async for chunk in request.stream():
        if len(body) + len(chunk) > limit:
            raise PayloadTooLarge(f"body exceeds the limit of {limit} bytes")
        body += chunk    # amortised growth (realloc/mremap), no copy per chunk
    return body


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def read_images(request: Request, *, max_bytes: int, max_images: int,
                      pool: Executor, reservation: Reservation) -> list:
    """The request's images as bytes-like objects (slices of the body where possible)."""
    media = _media_type(request)
    if media not in RAW_TYPES and media not in ("multipart/form-data", "application/json") \
            and not media.startswith("image/"):
        raise UnsupportedMediaType(
            f"content type {media!r} is not accepted; send image/jpeg, image/png, "
            "multipart/form-data or application/json with base64 images")
    body = await read_body(request, max_bytes)
    if not body:
        raise EmptyBody("the request body is empty; send a JPEG or PNG image")
    if media == "multipart/form-data":
        images = await off_loop(pool, len(body), parse_multipart, body,
                                request.headers.get("content-type", ""), max_images)
    elif media == "application/json":
        # the parsed strings and the decoded images are held beside the body
        reservation.charge(2 * len(body), "its parsed JSON and decoded base64")
        images = await off_loop(pool, len(body), decode_json_images, body, max_images)
    else:
        images = [memoryview(body)]
    if not images:
        raise EmptyBody("no image in the request")
    if len(images) > max_images:
        raise TooManyImages(f"{len(images)} images in one request; the limit is {max_images}")
    if any(not len(im) for im in images):
        raise EmptyBody("an image in the request is empty")
    return images


async def off_loop(pool: Executor, size: int, fn, *args):
    """`fn(*args)` inline when `size` is small, else in the bounded pool."""
    if size <= INLINE_BYTES:
        return fn(*args)
    return await asyncio.wrap_future(pool.submit(fn, *args))


def parse_multipart(body: bytearray | bytes, content_type: str, max_images: int,
                    names: tuple[str, ...] | None = None) -> list:
    """File parts of a multipart/form-data body, in order, as memoryviews of `body`.
    Parts without a filename (plain fields) are ignored, at most MAX_FIELD_PARTS of
    them: the parser stops at the first part over max_images + MAX_FIELD_PARTS.
    With `names`: [(name, data)] of the parts so named, files or fields (face compare's
    `a`, `b`, `embedding`), every other part ignored."""
    _, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if not boundary:
        raise InvalidPayload("malformed multipart body: no boundary in the content type")
    if len(boundary) > MAX_BOUNDARY:
        raise InvalidPayload(f"malformed multipart body: a boundary of {len(boundary)} "
                             f"characters (at most {MAX_BOUNDARY})")
    view = memoryview(body)
    parts: list = []
    state = {"field": b"", "value": b"", "file": False, "name": "", "pieces": [], "parts": 0}
    most = max_images + MAX_FIELD_PARTS

    def on_part_begin():
        state["parts"] += 1
        if state["parts"] > most:
            raise InvalidPayload(f"malformed multipart body: over {most} parts")
        state.update(field=b"", value=b"", file=False, name="", pieces=[])

    def on_header_field(data, start, end):
        state["field"] += data[start:end]

    def on_header_value(data, start, end):
        state["value"] += data[start:end]

    def on_header_end():
        if state["field"].strip().lower() == b"content-disposition":
            options = parse_options_header(state["value"].decode("latin-1"))[1]
            state["name"] = options.get(b"name", b"").decode("latin-1")
            state["file"] = (b"filename" in options if names is None else state["name"] in names)
        state["field"] = state["value"] = b""

    def on_part_data(data, start, end):
        if state["file"]:
            state["pieces"].append((data, start, end))

    def on_part_end():
        if not state["file"]:
            return
        if len(parts) >= max_images:
            raise TooManyImages(f"more than {max_images} images in one request")
        data = _join(state["pieces"], body, view)
        parts.append(data if names is None else (state["name"], data))

    try:
        parser = MultipartParser(boundary, {
            "on_part_begin": on_part_begin, "on_header_field": on_header_field,
            "on_header_value": on_header_value, "on_header_end": on_header_end,
            "on_part_data": on_part_data, "on_part_end": on_part_end},
            max_header_count=MAX_PART_HEADERS, max_header_size=MAX_PART_HEADER_BYTES)
        parser.write(body)
        parser.finalize()
    except FormParserError as exc:
        raise InvalidPayload(f"malformed multipart body: {exc}") from exc
    if parser.state != MultipartState.END:
        raise InvalidPayload("malformed multipart body: it ends before the closing boundary")
    return parts


def _join(pieces, body, view):
    """One part's data: a slice of the body when the parser reported it as contiguous
    slices of it (a single write: always, but for boundary look-alikes), else a copy."""
    if not pieces:
        return b""
    if all(d is body for d, _, _ in pieces) and all(
            pieces[i][2] == pieces[i + 1][1] for i in range(len(pieces) - 1)):
        return view[pieces[0][1]:pieces[-1][2]]
    return b"".join(bytes(d[s:e]) for d, s, e in pieces)


def _json(body) -> dict:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidPayload(f"malformed JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise InvalidPayload("the JSON body must be an object")
    return doc


def decode_json_images(body, max_images: int) -> list[bytes]:
    doc = _json(body)
    items = doc.get("images", [doc["image"]] if "image" in doc else None)
    if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
        raise InvalidPayload('JSON must hold "image": "<base64>" or "images": ["<base64>", ...]')
    if len(items) > max_images:
        raise TooManyImages(f"{len(items)} images in one request; the limit is {max_images}")
    try:
        return [base64.b64decode(s, validate=True) for s in items]
    except (binascii.Error, ValueError) as exc:
        raise InvalidPayload(f"invalid base64 image: {exc}") from exc


async def read_texts(request: Request, *, max_bytes: int, max_texts: int,
                     max_chars: int, pool: Executor) -> list[str]:
    """`{"text": "..."}` or `{"texts": [...]}`; each non-empty and at most max_chars."""
    media = _media_type(request)
    if media != "application/json":
        raise UnsupportedMediaType(f'send application/json {{"text": "..."}}, not {media!r}')
    body = await read_body(request, max_bytes)
    if not body:
        raise EmptyBody("the request body is empty")
    return await off_loop(pool, len(body), _texts, body, max_texts, max_chars)


def _texts(body, max_texts: int, max_chars: int) -> list[str]:
    doc = _json(body)
    texts = doc.get("texts", [doc["text"]] if "text" in doc else None)
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise InvalidText('JSON must hold "text": "..." or "texts": ["...", ...]')
    if not texts:
        raise InvalidText("no text given")
    if len(texts) > max_texts:
        raise TooManyImages(f"{len(texts)} texts in one request; the limit is {max_texts}")
    for i, t in enumerate(texts):
        if not t.strip():
            raise InvalidText(f"text {i} is empty")
        if len(t) > max_chars:
            raise InvalidText(f"text {i} has {len(t)} characters; the limit is {max_chars}")
    return texts
