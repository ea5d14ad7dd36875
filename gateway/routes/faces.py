"""POST /v1/faces: boxes, 5 landmarks, scores and 512-d ArcFace embeddings."""
from fastapi import APIRouter, Request

from contract.routes import Route, RouteTable

from .. import postprocess
from .common import (ERRORS, IMAGE_BODY, AnswerDep, EmbeddingFormat, MaxResults, ServiceDep, Threshold,
                     model_query, per_image, scored)
from .lean import LeanRoute

# No `from __future__ import annotations` in the route modules: an endpoint's parameter types
# are built from the route table at start-up, so FastAPI must see them as objects, not strings.


def router(route: Route, table: RouteTable, mount: dict | None = None) -> APIRouter:
    r = APIRouter(tags=["faces"], route_class=LeanRoute, **(mount or {}))
    Model = model_query(route)

    @r.post(route.path, openapi_extra=IMAGE_BODY, responses=ERRORS, summary="Faces",
            response_description="per image: faces with score, box, 5 landmarks (original "
            "pixels) and a unit-norm 512-d embedding")
    async def faces(request: Request, svc: ServiceDep, accept: AnswerDep,
                    model: Model = route.default.choice,
                    score_threshold: Threshold = None,
                    max_results: MaxResults = None,
                    embeddings: bool = True,
                    embedding_format: EmbeddingFormat = "float"):
        name = route.model_for(model)
        frames, out, cut, limit = await scored(request, svc, name, score_threshold, max_results,
                                               "boxes", table.default_threshold(name))
        return await svc.render(lambda vectors: per_image(name, frames, "faces", postprocess.faces(
            out["boxes"], out["scores"], out["landmarks"], out["embeddings"], out["num_faces"],
            frames, cut, limit, embeddings, vectors)), out, accept.with_embeddings(embedding_format))

    return r
