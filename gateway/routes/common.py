"""Shared route plumbing: the Service dependency, image reading, OpenAPI descriptions."""
from __future__ import annotations

from typing import Annotated, Literal

from fastapi import Depends, Query, Request

from contract.routes import Route

from .. import postprocess, tracing
from ..admission import reservation_of
from ..catalog import ModelInfo
from ..errors import InvalidParameter, NotAcceptable
from ..inputs import read_images
from ..negotiation import MSGPACK, OFFERED, negotiate
from ..responses import JSON_FLOAT, Answer, answer_for
from ..service import Frames, Service


async def get_service(request: Request) -> Service:
    # async: a plain `def` dependency would cost a thread-pool hop per request
    return request.app.state.service


ServiceDep = Annotated[Service, Depends(get_service)]


async def accepted(request: Request) -> Answer:
    """The encoding the Accept header asks for (gateway/negotiation.py); 406 before the
    body is read when it excludes them all."""
    media_type = negotiate(request.headers.get("accept"))
    if media_type is None:
        raise NotAcceptable(f"the Accept header allows none of the formats answered: {', '.join(OFFERED)}")
    return answer_for(media_type)


async def accepted_or_json(request: Request) -> Answer:
    """For the probes: what the Accept header asks for, JSON when it excludes everything
    (an orchestrator's probe must never fail on a header)."""
    media_type = negotiate(request.headers.get("accept"))
    return JSON_FLOAT if media_type is None else answer_for(media_type)


AnswerDep = Annotated[Answer, Depends(accepted)]
EmbeddingFormat = Annotated[Literal["float", "base64"], Query(
    description="how a JSON answer carries embeddings: `float` numbers, or `base64` of their "
    "little-endian float32 bytes. A msgpack answer (Accept: application/msgpack) always "
    "carries them as typed binary arrays")]
MaxResults = Annotated[int | None, Query(
    ge=1, description="results kept per image (default and most: the model's K, "
    "see GET /v1/models)")]


Threshold = Annotated[float | None, Query(
    ge=0.0, le=1.0, description="keep results scoring at least this (default and least: the "
    "score floor the model applies itself, see GET /v1/models)")]


def model_query(route: Route):
    """The type of a route's `model` query parameter: the contract's choices for the route
    (its models' route_choice parameters; an enum in OpenAPI), the default first."""
    return Annotated[Literal[route.choices], Query(
        description=f"the model behind {route.path} (default {route.default.choice!r}; see GET /v1/models)")]


def threshold(value: float | None, floor: tuple[float, str] | None, param: str,
              default: float | None = None) -> float:
    """The score threshold to apply: `value`, else `default`, never under the floor the
    model applies itself (a lower one would silently behave as the floor: 422)."""
    low = floor[0] if floor else 0.0
    if value is None:
        return max(low, default or 0.0)
    if value < low:
        raise InvalidParameter(f"{param}={value:g} is below {floor[1]}'s own score floor "
                               f"{floor[0]:g} (its config.pbtxt parameter): results under it "
                               f"are never returned; use {param} >= {floor[0]:g}")
    return value


def result_limit(value: int | None, info: ModelInfo, output: str, most: int | None = None) -> int:
    """max_results: the model's K (rows of `output`) unless asked for fewer."""
    k = info.rows(output) if most is None else most
    if value is None:
        return k
    if value > k:
        raise InvalidParameter(f"max_results={value} is more than {info.name} returns per "
                               f"image (K={k})")
    return value


async def frames_for(request: Request, svc: Service, info: ModelInfo) -> Frames:
    """The request's images read, admitted to the capacity of the model and of the models
    it runs, one place per image (svc.admit), and decoded into `info`'s frames. Get `info` with svc.model() first: a model that is
    not served is a 503 before the body is read."""
    s = svc.settings
    reservation = reservation_of(request)
    with tracing.span("read_body"):
        images = await read_images(request, max_bytes=s.max_body_bytes, max_images=s.max_images,
                                   pool=svc.pool, reservation=reservation)
    with tracing.span("admission", model=info.name):
        svc.admit(info.name, reservation, len(images))
    with tracing.span("decode", images=len(images)):
        return await svc.frames(images, info.frame, info.max_batch_size, reservation)


async def scored(request: Request, svc: Service, model: str, score_threshold: float | None,
                 max_results: int | None, rows_of: str, default: float | None = None):
    """What a one-model image route with a score threshold does before its postprocess:
    the model (503 before the body when not served or at capacity), the threshold against
    the model's floor and max_results against its K (422), the frames, the Triton call.
    Returns (frames, outputs, threshold, limit)."""
    info = svc.model(model)
    cut = threshold(score_threshold, svc.catalog.score_floor(model), "score_threshold", default)
    limit = result_limit(max_results, info, rows_of)
    frames = await frames_for(request, svc, info)
    return frames, await svc.infer_frames(model, frames, info.output_names), cut, limit


def per_image(model: str, frames: Frames, key: str, items: list) -> dict:
    """The answer of a one-output image route: per image its original size and `key`."""
    return {"model": model, "results": [
        {**size, key: it} for size, it in zip(postprocess.sizes(frames), items)]}


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

# The 200 answer's msgpack alternative, for OpenAPI (application/json is FastAPI's default).
ANSWERS = {200: {"content": {MSGPACK: {"schema": {
    "type": "object", "description": "With Accept: application/msgpack (or application/x-msgpack, "
    "application/vnd.msgpack): the JSON answer's content as MessagePack. Every embedding is a "
    'typed array, a map {"dtype": "<f4", "shape": [512], "data": <bin: the little-endian '
    "bytes>}; other numbers are msgpack ints and float64s (the JSON answer's values). "
    "See docs/gateway.md, Answer formats."}}}}}

ERRORS = {**ANSWERS, **{code: {"description": desc, "content": {"application/json": {"example": {
    "error": {"code": ex, "message": "..."}}}}} for code, desc, ex in (
    (400, "empty, corrupt or truncated image; malformed body", "invalid_image"),
    (413, "body, pixel count or image count over the limit", "image_too_large"),
    (406, "the Accept header allows neither JSON nor msgpack (errors are always JSON)",
     "not_acceptable"),
    (415, "not a JPEG or PNG", "unsupported_media_type"),
    (422, "invalid parameter or text", "invalid_parameter"),
    (429, "Triton's queue is full (Retry-After)", "triton_overloaded"),
    (503, "Triton down, or the gateway's memory budget or the model's capacity in use "
     "(Retry-After)", "gateway_overloaded"),
    (504, "Triton missed the deadline", "triton_timeout"),
)}}
