"""POST /v1/ocr: text lines with polygons and scores, in reading order."""
from __future__ import annotations

from fastapi import APIRouter, Request

from .. import postprocess
from .common import ERRORS, IMAGE_BODY, MaxResults, ServiceDep, Threshold, per_image, scored
from .lean import LeanRoute

router = APIRouter(tags=["ocr"], route_class=LeanRoute)
MODEL = "ocr"


@router.post("/v1/ocr", openapi_extra=IMAGE_BODY, responses=ERRORS, summary="Text lines",
             response_description="per image: lines with text, score and a 4-point polygon "
             "(clockwise from top-left, original pixels)")
async def ocr(request: Request, svc: ServiceDep,
              score_threshold: Threshold = None,
              max_results: MaxResults = None):
    frames, out, cut, limit = await scored(request, svc, MODEL, score_threshold, max_results,
                                           "texts")
    return await svc.render(lambda: per_image(MODEL, frames, "lines", postprocess.text_lines(
        out["texts"], out["polygons"], out["scores"], out["num_lines"], frames, cut, limit)),
        out)
