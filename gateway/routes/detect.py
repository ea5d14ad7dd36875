"""POST /v1/detect: COCO objects (the contract's default detector, others by `?model=`)."""
from fastapi import APIRouter, Request

from contract.routes import Route, RouteTable

from .. import postprocess
from .common import (ERRORS, IMAGE_BODY, AnswerDep, MaxResults, ServiceDep, Threshold, model_query, per_image,
                     scored)
from .lean import LeanRoute


def router(route: Route, table: RouteTable, mount: dict | None = None) -> APIRouter:
    r = APIRouter(tags=["detect"], route_class=LeanRoute, **(mount or {}))
    Model = model_query(route)

    @r.post(route.path, openapi_extra=IMAGE_BODY, responses=ERRORS, summary="COCO objects",
            response_description="per image: objects with label, score and box "
            "[x1, y1, x2, y2] in original pixels")
    async def detect(request: Request, svc: ServiceDep, accept: AnswerDep,
                     model: Model = route.default.choice,
                     score_threshold: Threshold = None,
                     max_results: MaxResults = None):
        name = route.model_for(model)
        frames, out, cut, limit = await scored(request, svc, name, score_threshold, max_results,
                                               "boxes", table.default_threshold(name))
        return await svc.render(lambda vectors: per_image(model, frames, "objects", postprocess.objects(
            out["boxes"], out["scores"], out["classes"], out["num_detections"], frames, cut,
            limit)), out, accept)

    return r
