"""Request bodies -> image bytes (or texts), with the size limits enforced while reading.

Accepted: a raw body (image/jpeg, image/png, application/octet-stream), multipart
form-data (every file part is an image, in order) or JSON
(`{"image": "<base64>"}` / `{"images": [...]}`). The image format itself is judged
from the magic bytes later, not from the declared type.
"""
from __future__ import annotations

import base64
import binascii

import orjson
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from .errors import (EmptyBody, InvalidPayload, InvalidText, PayloadTooLarge, TooManyImages,
                     UnsupportedMediaType)

RAW_TYPES = ("image/jpeg", "image/jpg", "image/png", "application/octet-stream", "")


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refusing early from Content-Length and again while streaming."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"body of {declared} bytes exceeds the limit of {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def read_images(request: Request, *, max_bytes: int, max_images: int) -> list[bytes]:
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
        images = await _multipart(request, body, max_images)
    elif media == "application/json":
        images = _json_images(body, max_images)
    else:
        images = [body]
    if not images:
        raise EmptyBody("no image in the request")
    if len(images) > max_images:
        raise TooManyImages(f"{len(images)} images in one request; the limit is {max_images}")
    if any(not im for im in images):
        raise EmptyBody("an image in the request is empty")
    return images


async def _multipart(request: Request, body: bytes, max_images: int) -> list[bytes]:
    async def once():
        yield body

    parser = MultiPartParser(request.headers, once(), max_files=max_images,
                             max_fields=100, max_part_size=1024 * 1024)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        if "Too many files" in exc.message:
            raise TooManyImages(f"more than {max_images} images in one request") from exc
        raise InvalidPayload(f"malformed multipart body: {exc.message}") from exc
    try:
        files = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
        return [await f.read() for f in files]
    finally:
        await form.close()


def _json(body: bytes) -> dict:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidPayload(f"malformed JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise InvalidPayload("the JSON body must be an object")
    return doc


def _json_images(body: bytes, max_images: int) -> list[bytes]:
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
                     max_chars: int) -> list[str]:
    """`{"text": "..."}` or `{"texts": [...]}`; each non-empty and at most max_chars."""
    media = _media_type(request)
    if media != "application/json":
        raise UnsupportedMediaType(f'send application/json {{"text": "..."}}, not {media!r}')
    body = await read_body(request, max_bytes)
    if not body:
        raise EmptyBody("the request body is empty")
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
