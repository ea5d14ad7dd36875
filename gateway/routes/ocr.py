"""POST /v1/ocr: text lines with polygons and scores, in reading order."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request

from .. import postprocess
from ..responses import JSON
from .common import ERRORS, IMAGE_BODY, ServiceDep, frames_for, per_image
from .lean import LeanRoute

router = APIRouter(tags=["ocr"], route_class=LeanRoute)
MODEL = "ocr"
OUTPUTS = ("texts", "polygons", "scores", "num_lines")


@router.post("/v1/ocr", openapi_extra=IMAGE_BODY, responses=ERRORS, summary="Text lines",
             response_description="per image: lines with text, score and a 4-point polygon "
             "(clockwise from top-left, original pixels)")
async def ocr(request: Request, svc: ServiceDep,
              score_threshold: Annotated[float, Query(ge=0.0, le=1.0)] = 0.5,
              max_results: Annotated[int, Query(ge=1, le=64)] = 64) -> JSON:
    frames = await frames_for(request, svc, MODEL)
    out = await svc.infer_frames(MODEL, frames, OUTPUTS)
    lines = postprocess.text_lines(out["texts"], out["polygons"], out["scores"],
                                   out["num_lines"], frames, score_threshold, max_results)
    return per_image(MODEL, frames, "lines", lines)
