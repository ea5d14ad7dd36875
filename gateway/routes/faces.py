"""POST /v1/faces: boxes, 5 landmarks, scores and 512-d ArcFace embeddings."""
from __future__ import annotations

from fastapi import APIRouter, Request

from .. import postprocess
from .common import ERRORS, IMAGE_BODY, MaxResults, ServiceDep, Threshold, per_image, scored
from .lean import LeanRoute

router = APIRouter(tags=["faces"], route_class=LeanRoute)
MODEL = "faces"
DEFAULT_THRESHOLD = 0.5


@router.post("/v1/faces", openapi_extra=IMAGE_BODY, responses=ERRORS, summary="Faces",
             response_description="per image: faces with score, box, 5 landmarks (original "
             "pixels) and a unit-norm 512-d embedding")
async def faces(request: Request, svc: ServiceDep,
                score_threshold: Threshold = None,
                max_results: MaxResults = None,
                embeddings: bool = True):
    frames, out, cut, limit = await scored(request, svc, MODEL, score_threshold, max_results,
                                           "boxes", DEFAULT_THRESHOLD)
    return await svc.render(lambda: per_image(MODEL, frames, "faces", postprocess.faces(
        out["boxes"], out["scores"], out["landmarks"], out["embeddings"], out["num_faces"],
        frames, cut, limit, embeddings)), out)
