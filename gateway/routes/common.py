"""Shared route plumbing: the Service dependency, image reading, OpenAPI descriptions."""
from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Query, Request

from .. import postprocess
from ..inputs import read_images
from ..responses import JSON
from ..service import Frames, Service


async def get_service(request: Request) -> Service:
    # async: a plain `def` dependency would cost a thread-pool hop per request
    return request.app.state.service


ServiceDep = Annotated[Service, Depends(get_service)]
MaxResults = Annotated[int, Query(ge=1, le=100, description="results kept per image")]


async def frames_for(request: Request, svc: Service, model: str) -> Frames:
    s = svc.settings
    info = svc.model(model)  # 503 before reading the body when the model is not served
    images = await read_images(request, max_bytes=s.max_body_bytes, max_images=s.max_images)
    return await svc.frames(images, info.frame, info.max_batch_size)


def per_image(model: str, frames: Frames, key: str, items: list) -> JSON:
    """The response of a one-output image route: per image its original size and `key`."""
    return JSON({"model": model, "results": [
        {**size, key: it} for size, it in zip(postprocess.sizes(frames), items)]})


# The body is read by hand (limits while streaming), so describe it for OpenAPI here.
IMAGE_BODY = {
    "requestBody": {
        "required": True,
        "description": "One image as the raw body, several as multipart files, or base64 JSON.",
        "content": {
            "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
            "image/png": {"schema": {"type": "string", "format": "binary"}},
            "multipart/form-data": {"schema": {
                "type": "object",
                "properties": {"images": {"type": "array",
                                          "items": {"type": "string", "format": "binary"}}}}},
            "application/json": {
                "schema": {"type": "object", "properties": {
                    "image": {"type": "string", "format": "byte"},
                    "images": {"type": "array", "items": {"type": "string", "format": "byte"}}}},
                "example": {"image": "/9j/4AAQSkZJRgABAQ..."}},
        },
    }
}

ERRORS = {code: {"description": desc, "content": {"application/json": {"example": {
    "error": {"code": ex, "message": "..."}}}}} for code, desc, ex in (
    (400, "empty, corrupt or truncated image; malformed body", "invalid_image"),
    (413, "body, pixel count or image count over the limit", "image_too_large"),
    (415, "not a JPEG or PNG", "unsupported_media_type"),
    (422, "invalid parameter or text", "invalid_parameter"),
    (429, "Triton's queue is full (Retry-After)", "triton_overloaded"),
    (503, "Triton down or the gateway saturated (Retry-After)", "triton_unavailable"),
    (504, "Triton missed the deadline", "triton_timeout"),
)}
