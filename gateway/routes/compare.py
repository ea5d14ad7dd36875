"""POST /v1/faces/compare: 1:1 face verification, the cosine similarity of one face in
image `a` and one in image `b` (or a reference embedding), in ONE Triton call (a batch of
2 through the faces pipeline; of 1 with an embedding), and `match` at the threshold the
embedder's config.pbtxt states (contract: RouteTable.match_threshold)."""
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Query, Request

from contract.routes import Route, RouteTable

from .. import compare, postprocess
from ..admission import reservation_of
from ..errors import InvalidParameter
from ..pairs import read_pair
from .common import ANSWERS, ERRORS, AnswerDep, ServiceDep, Threshold, model_query, threshold
from .lean import LeanRoute

FaceIndex = Annotated[int | None, Query(
    ge=0, description="which face of the image to compare: its index among the faces "
    "/v1/faces answers for it at the same score_threshold (sorted by score); default: the "
    "largest by box area")]


def router(route: Route, table: RouteTable, mount: dict | None = None) -> APIRouter:
    r = APIRouter(tags=["faces"], route_class=LeanRoute, **(mount or {}))
    Model = model_query(route)

    @r.post(route.path, openapi_extra=PAIR_BODY, responses={**ERRORS, **COMPARE_ANSWER},
            summary="Face compare (1:1 verification)",
            response_description="the cosine similarity of the chosen faces, `match` at the "
            "model's threshold (and its provenance), both boxes in original pixels")
    async def faces_compare(request: Request, svc: ServiceDep, accept: AnswerDep,
                            model: Model = route.default.choice,
                            face_a: FaceIndex = None, face_b: FaceIndex = None,
                            score_threshold: Threshold = None):
        name = route.model_for(model)
        info = svc.model(name)
        stated = table.match_threshold(name)   # the table refuses a pair route without one
        match = compare.Threshold(stated[0], stated[1], svc.catalog.provenance.get(stated[1]))
        cut = threshold(score_threshold, svc.catalog.score_floor(name), "score_threshold",
                        table.default_threshold(name))
        dim = info.outputs[[t.name for t in info.outputs].index("embeddings")].shape[-1]
        s = svc.settings
        reservation = reservation_of(request)
        pair = await read_pair(request, max_bytes=s.max_body_bytes, pool=svc.pool,
                               reservation=reservation)
        # a bad reference is refused before any pixel is decoded or Triton called
        reference = None if pair.embedding is None else compare.embedding_from(pair.embedding, dim)
        if reference is not None and face_b is not None:
            raise InvalidParameter("face_b chooses a face of image b; the request gives an embedding instead")
        svc.admit(name, reservation)
        frames = await svc.frames(pair.images, info.frame, info.max_batch_size, reservation)
        out = await svc.infer_frames(name, frames, info.output_names)
        sides = []
        for i, (which, index) in enumerate(zip("ab", (face_a, face_b))):
            if i == len(pair.images):
                break
            n = compare.kept(int(out["num_faces"][i].item()), out["scores"][i], cut)
            k = compare.choose(out["boxes"][i], n, index, which)
            sides.append((i, n, k))
        vectors = [out["embeddings"][i, k] for i, _, k in sides] + \
            ([reference] if reference is not None else [])
        similarity = compare.cosine(vectors[0], vectors[1])
        rows = np.array([i for i, _, _ in sides])
        faces = np.array([k for _, _, k in sides])
        boxes = postprocess.original(out["boxes"][rows, faces], frames.scale[rows], frames.size[rows])
        answer = {"model": name, **compare.verdict(similarity, match)}
        for (i, n, k), box, size in zip(sides, boxes, postprocess.sizes(frames)):
            answer["ab"[i]] = {"source": "image", **size, "faces": n, "face": k,
                               "score": round(float(out["scores"][i, k]), 4), "box": box}
        if reference is not None:
            answer["b"] = {"source": "embedding"}
        return accept.response(answer)

    return r


# The body is read by hand (gateway/pairs.py), so describe it for OpenAPI here.
_PAIR = {"a": {"type": "string", "format": "byte", "description": "image a (JPEG/PNG)"},
         "b": {"type": "string", "format": "byte", "description": "image b (or give `embedding`)"},
         "embedding": {"type": "string", "format": "byte", "description":
                       "instead of b: a reference embedding as /v1/faces answers it with "
                       "embedding_format=base64 (base64 of the D little-endian float32)"}}
PAIR_BODY = {"requestBody": {
    "required": True,
    "description": "Image `a` and either image `b` or a reference `embedding`: multipart files "
                   "(the embedding a base64 text field), base64 JSON, or msgpack (images and the "
                   "embedding as bin: the float32 bytes; a typed array as /v1/faces answers in "
                   "msgpack is accepted too).",
    "content": {
        "multipart/form-data": {"schema": {"type": "object", "required": ["a"], "properties": {
            "a": {"type": "string", "format": "binary"}, "b": {"type": "string", "format": "binary"},
            "embedding": _PAIR["embedding"]}}},
        "application/json": {"schema": {"type": "object", "required": ["a"], "properties": _PAIR},
                             "example": {"a": "/9j/4AAQSkZJRgABAQ...", "b": "/9j/4AAQSkZJRgABAQ..."}},
        "application/msgpack": {"schema": {"type": "object", "required": ["a"], "description":
                                           "the JSON keys, images and embedding as bin"}},
    }}}

_SIDE = {"type": "object", "properties": {
    "source": {"type": "string", "enum": ["image", "embedding"]},
    "width": {"type": "integer"}, "height": {"type": "integer"},
    "faces": {"type": "integer", "description": "faces found at the score threshold"},
    "face": {"type": "integer", "description": "the index compared"},
    "score": {"type": "number"},
    "box": {"type": "array", "items": {"type": "number"}, "description": "x1, y1, x2, y2 in original pixels"}}}
COMPARE_ANSWER = {200: {"content": {
    "application/json": {"schema": {"type": "object", "properties": {
        "model": {"type": "string"}, "similarity": {"type": "number", "minimum": -1, "maximum": 1},
        "match": {"type": "boolean"},
        "threshold": {"type": "object", "properties": {
            "value": {"type": "number"}, "stated_by": {"type": "string"},
            "weights_provenance": {"type": "string"}, "synthetic_weights": {"type": "boolean"}}},
        "a": _SIDE, "b": _SIDE}}},
    **ANSWERS[200]["content"]}}}
