"""POST /v1/embed/image and /v1/embed/text: MobileCLIP embeddings (unit norm, 512-d)."""
import numpy as np
from fastapi import APIRouter, Request

from contract.routes import Route, RouteTable

from ..admission import reservation_of
from ..inputs import read_texts
from .common import ERRORS, IMAGE_BODY, AnswerDep, EmbeddingFormat, ServiceDep, frames_for, model_query
from .lean import LeanRoute

TEXT_BODY = {"requestBody": {"required": True, "content": {"application/json": {
    "schema": {"type": "object", "properties": {
        "text": {"type": "string"}, "texts": {"type": "array", "items": {"type": "string"}}}},
    "example": {"texts": ["a photo of an astronaut", "a dog"]}}}}}


def image_router(route: Route, table: RouteTable, mount: dict | None = None) -> APIRouter:
    r = APIRouter(tags=["embed"], route_class=LeanRoute, **(mount or {}))
    Model = model_query(route)

    @r.post(route.path, openapi_extra=IMAGE_BODY, responses=ERRORS,
            summary="MobileCLIP image embeddings")
    async def embed_image(request: Request, svc: ServiceDep, accept: AnswerDep,
                          model: Model = route.default.choice,
                          embedding_format: EmbeddingFormat = "float"):
        name = route.model_for(model)
        info = svc.model(name)
        frames = await frames_for(request, svc, info)
        out = await svc.infer_frames(name, frames, info.output_names)
        return await svc.render(lambda vectors: {"model": name, "results": [
            {"embedding": e} for e in vectors(out["embeddings"])]}, out,
            accept.with_embeddings(embedding_format))

    return r


def text_router(route: Route, table: RouteTable, mount: dict | None = None) -> APIRouter:
    r = APIRouter(tags=["embed"], route_class=LeanRoute, **(mount or {}))
    Model = model_query(route)

    @r.post(route.path, openapi_extra=TEXT_BODY, responses=ERRORS,
            summary="MobileCLIP text embeddings")
    async def embed_text(request: Request, svc: ServiceDep, accept: AnswerDep,
                         model: Model = route.default.choice,
                         embedding_format: EmbeddingFormat = "float"):
        name = route.model_for(model)
        s = svc.settings
        info = svc.model(name)
        texts = await read_texts(request, max_bytes=s.max_body_bytes, max_texts=s.max_images,
                                 max_chars=s.max_text_chars, pool=svc.pool)
        svc.admit(name, reservation_of(request), len(texts))
        batch = np.array([[t.encode("utf-8")] for t in texts], dtype=np.object_)
        out = await svc.infer(name, {info.inputs[0].name: batch}, info.output_names)
        return await svc.render(lambda vectors: {"model": name, "results": [
            {"text": t, "embedding": e} for t, e in zip(texts, vectors(out["embeddings"]))]}, out,
            accept.with_embeddings(embedding_format))

    return r
