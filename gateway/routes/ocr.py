"""POST /v1/ocr: text lines with polygons and scores, in reading order."""
from fastapi import APIRouter, Request

from contract.routes import Route, RouteTable

from .. import postprocess
from .common import (ERRORS, IMAGE_BODY, AnswerDep, MaxResults, ServiceDep, Threshold, model_query, per_image,
                     scored)
from .lean import LeanRoute


def router(route: Route, table: RouteTable, mount: dict | None = None) -> APIRouter:
    r = APIRouter(tags=["ocr"], route_class=LeanRoute, **(mount or {}))
    Model = model_query(route)

    @r.post(route.path, openapi_extra=IMAGE_BODY, responses=ERRORS, summary="Text lines",
            response_description="per image: lines with text, score and a 4-point polygon "
            "(clockwise from top-left, original pixels)")
    async def ocr(request: Request, svc: ServiceDep, accept: AnswerDep,
                  model: Model = route.default.choice,
                  score_threshold: Threshold = None,
                  max_results: MaxResults = None):
        name = route.model_for(model)
        frames, out, cut, limit = await scored(request, svc, name, score_threshold, max_results,
                                               "texts", table.default_threshold(name))
        return await svc.render(lambda vectors: per_image(name, frames, "lines", postprocess.text_lines(
            out["texts"], out["polygons"], out["scores"], out["num_lines"], frames, cut, limit)),
            out, accept)

    return r
