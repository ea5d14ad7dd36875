"""POST /v1/analyze: objects, faces, text lines and a CLIP embedding in ONE Triton call
(the `analyze` ensemble runs the steps concurrently on the server)."""
from fastapi import APIRouter, Request

from contract.routes import Route, RouteTable

from .. import postprocess
from .common import (ERRORS, IMAGE_BODY, AnswerDep, EmbeddingFormat, MaxResults, ServiceDep, Threshold,
                     frames_for, model_query, result_limit, threshold)
from .lean import LeanRoute


def router(route: Route, table: RouteTable, mount: dict | None = None) -> APIRouter:
    r = APIRouter(tags=["analyze"], route_class=LeanRoute, **(mount or {}))
    Model = model_query(route)

    @r.post(route.path, openapi_extra=IMAGE_BODY, responses=ERRORS,
            summary="Objects, faces, text and an image embedding")
    async def analyze(request: Request, svc: ServiceDep, accept: AnswerDep,
                      model: Model = route.default.choice,
                      object_threshold: Threshold = None,
                      face_threshold: Threshold = None,
                      text_threshold: Threshold = None,
                      max_results: MaxResults = None,
                      embedding_format: EmbeddingFormat = "float"):
        name = route.model_for(model)
        info = svc.model(name)
        floor = svc.catalog.score_floor
        cuts = tuple(threshold(value, floor(name, output), param, table.default_threshold(name, output))
                     for value, output, param in ((object_threshold, "object_scores", "object_threshold"),
                                                  (face_threshold, "face_scores", "face_threshold"),
                                                  (text_threshold, "text_scores", "text_threshold")))
        most = max(info.rows(o) for o in ("object_boxes", "face_boxes", "texts"))
        limit = result_limit(max_results, info, "", most)
        frames = await frames_for(request, svc, info)
        o = await svc.infer_frames(name, frames, info.output_names)

        def build(vectors):
            objs = postprocess.objects(o["object_boxes"], o["object_scores"], o["object_classes"],
                                       o["num_objects"], frames, cuts[0], limit)
            found = postprocess.faces(o["face_boxes"], o["face_scores"], o["face_landmarks"],
                                      o["face_embeddings"], o["num_faces"], frames, cuts[1], limit,
                                      vectors=vectors)
            lines = postprocess.text_lines(o["texts"], o["text_polygons"], o["text_scores"],
                                           o["num_lines"], frames, cuts[2], limit)
            return {"model": name, "results": [
                {**size, "objects": ob, "faces": f, "lines": ls, "embedding": e}
                for size, ob, f, ls, e in zip(postprocess.sizes(frames), objs, found, lines,
                                              vectors(o["image_embedding"]))]}
        return await svc.render(build, o, accept.with_embeddings(embedding_format))

    return r
