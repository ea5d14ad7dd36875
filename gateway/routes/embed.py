"""POST /v1/embed/image and /v1/embed/text: MobileCLIP embeddings (unit norm, 512-d)."""
from __future__ import annotations

import numpy as np
from fastapi import APIRouter, Request

from ..admission import reservation_of
from ..inputs import read_texts
from .common import ERRORS, IMAGE_BODY, ServiceDep, frames_for
from .lean import LeanRoute

router = APIRouter(tags=["embed"], route_class=LeanRoute)
IMAGE_MODEL, TEXT_MODEL = "mobileclip_image", "text_embed"

TEXT_BODY = {"requestBody": {"required": True, "content": {"application/json": {
    "schema": {"type": "object", "properties": {
        "text": {"type": "string"}, "texts": {"type": "array", "items": {"type": "string"}}}},
    "example": {"texts": ["a photo of an astronaut", "a dog"]}}}}}


@router.post("/v1/embed/image", openapi_extra=IMAGE_BODY, responses=ERRORS,
             summary="MobileCLIP image embeddings")
async def embed_image(request: Request, svc: ServiceDep):
    info = svc.model(IMAGE_MODEL)
    frames = await frames_for(request, svc, info)
    out = await svc.infer_frames(IMAGE_MODEL, frames, info.output_names)
    return await svc.render(lambda: {"model": IMAGE_MODEL, "results": [
        {"embedding": e} for e in out["embeddings"].tolist()]}, out)


@router.post("/v1/embed/text", openapi_extra=TEXT_BODY, responses=ERRORS,
             summary="MobileCLIP text embeddings")
async def embed_text(request: Request, svc: ServiceDep):
    s = svc.settings
    info = svc.model(TEXT_MODEL)
    texts = await read_texts(request, max_bytes=s.max_body_bytes, max_texts=s.max_images,
                             max_chars=s.max_text_chars, pool=svc.pool)
    svc.admit(TEXT_MODEL, reservation_of(request))
    batch = np.array([[t.encode("utf-8")] for t in texts], dtype=np.object_)
    out = await svc.infer(TEXT_MODEL, {info.inputs[0].name: batch}, info.output_names)
    return await svc.render(lambda: {"model": TEXT_MODEL, "results": [
        {"text": t, "embedding": e} for t, e in zip(texts, out["embeddings"].tolist())]}, out)
