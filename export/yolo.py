"""YOLO11s (ultralytics, offline) with decode, class-aware NMS and top-K inside the graph.

uint8 NHWC -> x/255 -> ultralytics DetectionModel -> [B, 4+nc, N] (cx,cy,w,h in input
pixels, per-class sigmoid scores) -> x1y1x2y2, best class per anchor -> Fast NMS (class-aware)
-> boxes/scores/classes/num_detections padded to the contract's K.

Weights: a user's ultralytics checkpoint (yolo11s.pt), else synthetic: yolo11s.yaml built
under torch.manual_seed(seed), then made non-degenerate (see `_calibrate_synthetic`).
"""
from __future__ import annotations

import os

import numpy as np

from .base import OPSET, ExportError, ExportJob, WeightsSearch, WeightsSource

MODELS = ("yolo",)
ARCH = "yolo11s.yaml"
# Fast NMS compares the top candidates pairwise ([B,C,C] IoU). ultralytics' predictor looks
# at up to 30000 boxes with a sequential loop; 1000 covers every realistic image above the
# 0.25 score threshold and keeps the matrix at 4 MB per image. Contract may override it.
DEFAULT_CANDIDATES = 1000
# Synthetic weights: share of anchors whose best class clears the score threshold on the
# calibration images; enough boxes to exercise NMS and top-K without flooding them.
_SYNTHETIC_POSITIVE_RATE = 0.01


def resolve_weights(model: str, search: WeightsSearch) -> WeightsSource:
    path = search.find(model, "yolo11s.pt", "yolo*.pt")
    if path is None:
        return search.synthetic(f"YOLO11s ({ARCH}, ultralytics {_ultralytics_version()})")
    return WeightsSource("file", f"ultralytics checkpoint {path.name}", path)


def _ultralytics_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ultralytics")
    except PackageNotFoundError:
        return "not installed"


def load_yolo(weights: WeightsSource):
    """An ultralytics YOLO object on the given weights, built without network access."""
    os.environ.setdefault("YOLO_OFFLINE", "1")
    import torch
    from ultralytics import YOLO

    if weights.synthetic:
        torch.manual_seed(weights.seed)
        yolo = YOLO(ARCH)
        _calibrate_synthetic(yolo.model, weights.seed)
    else:
        try:
            yolo = YOLO(str(weights.path))
        except Exception as exc:  # ultralytics raises assorted types for foreign files
            raise ExportError(f"yolo: cannot load {weights.path} as an ultralytics checkpoint: {exc}") from exc
        if yolo.task != "detect":
            raise ExportError(f"yolo: {weights.path} is a {yolo.task!r} model, expected 'detect'")
    yolo.model.eval()
    for p in yolo.model.parameters():
        p.requires_grad_(False)
    return yolo


def _calibrate_synthetic(det, seed: int) -> None:
    """Fresh ultralytics init is degenerate at eval: BatchNorm's default statistics shrink
    activations to zero over ~100 layers, so every anchor gets the same box and a score of
    1e-4. Re-estimate BN statistics on seeded noise images (one train-mode pass), then set
    each level's class bias so ~1% of anchors clear the threshold: outputs then differ per
    image and per anchor, and NMS/top-K get real work.
    """
    import torch
    from torch import nn

    g = torch.Generator().manual_seed(seed)
    # 1/f ("pink") noise: natural images' spectrum, so BN statistics and the class-bias
    # calibration carry over to real photos (uniform noise or single-scale blobs do not).
    octaves = (2, 5, 10, 20, 40, 80, 160, 320, 640)
    calib = 0.5 + sum(3.0 / s ** 0.5 * nn.functional.interpolate(torch.rand(4, 3, s, s, generator=g) - 0.5,
                                                              size=(640, 640), mode="bilinear",
                                                              align_corners=False) for s in octaves)
    calib = calib.clamp(0.0, 1.0)
    for m in det.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the pass
    det.train()
    with torch.no_grad():
        det(calib)
    det.eval()
    head = det.model[-1]
    cls_convs = [seq[-1] for seq in head.one2many["cls_head"]]
    for conv in cls_convs:
        conv.bias.data.zero_()
    with torch.no_grad():
        scores = det(calib)[0][:, 4:]                     # sigmoid of raw logits, [B,nc,N]
    best = torch.logit(scores.amax(1).clamp(1e-6, 1 - 1e-6))
    start = 0
    target = float(torch.logit(torch.tensor(0.25)))
    for conv, stride in zip(cls_convs, head.stride.tolist()):
        n = (640 // int(stride)) ** 2
        level = best[:, start:start + n].flatten()
        conv.bias.data.fill_(target - float(torch.quantile(level, 1 - _SYNTHETIC_POSITIVE_RATE)))
        start += n


def geometry(job: ExportJob) -> dict:
    c = job.contract
    img = c.inputs[0]
    if len(c.inputs) != 1 or len(img.dims) != 3 or img.dims[2] != 3:
        raise ExportError(f"yolo: expected one [H,W,3] image input, contract has {[t.dims for t in c.inputs]}")
    k = c.output("boxes").dims[0]
    return {"h": img.dims[0], "w": img.dims[1], "k": k,
            "score_threshold": c.float_parameter("score_threshold"),
            "iou_threshold": c.float_parameter("nms_iou_threshold"),
            "candidates": int(c.parameter("nms_candidates", str(DEFAULT_CANDIDATES)))}


def build_module(det, g: dict):
    """The exported graph as a torch module around ultralytics' DetectionModel."""
    import torch
    from torch import nn

    from .graph_ops import ImagePreprocess, fast_nms

    class YoloDetect(nn.Module):
        def __init__(self):
            super().__init__()
            self.pre = ImagePreprocess(std=(255.0, 255.0, 255.0))
            self.det = det

        def raw(self, images):
            """DetectionModel's own output [B, 4+nc, N] (pre-NMS), for parity checks."""
            y = self.det(self.pre(images))
            return y[0] if isinstance(y, (tuple, list)) else y

        def forward(self, images):
            y = self.raw(images).transpose(1, 2)                      # [B,N,4+nc]
            xy, wh = y[..., :2], y[..., 2:4]
            boxes = torch.cat([xy - wh / 2, xy + wh / 2], -1)
            scores, classes = y[..., 4:].max(-1)
            boxes, scores, classes, _, count = fast_nms(
                boxes, scores, candidates=g["candidates"], max_out=g["k"], iou_threshold=g["iou_threshold"],
                score_threshold=g["score_threshold"], classes=classes)
            # like ultralytics' predictor: NMS on raw boxes, then clip to the image
            limit = torch.tensor([g["w"], g["h"], g["w"], g["h"]], dtype=boxes.dtype)
            boxes = torch.minimum(boxes.clamp_min(0), limit)
            return boxes, scores, classes.to(torch.int32), count

    return YoloDetect().eval()


def export(job: ExportJob) -> None:
    import torch

    g = geometry(job)
    job.progress("building YOLO11s" + (" (synthetic, calibrating BN)" if job.weights.synthetic else ""))
    module = build_module(load_yolo(job.weights).model, g)
    name_in = job.contract.inputs[0].name
    names_out = [t.name for t in job.contract.outputs]
    expected = ["boxes", "scores", "classes", "num_detections"]
    if sorted(names_out) != sorted(expected):
        raise ExportError(f"yolo: contract outputs {names_out}, this exporter produces {expected}")
    dummy = torch.zeros(2, g["h"], g["w"], 3, dtype=torch.uint8)
    job.progress(f"torch.onnx.export (opset {OPSET}), K={g['k']}, score>{g['score_threshold']}, "
                 f"iou<={g['iou_threshold']}")
    # torch emits outputs in forward's order; the contract may list them in any order
    with torch.no_grad():
        torch.onnx.export(module, (dummy,), str(job.out_path), input_names=[name_in], output_names=expected,
                          dynamic_axes={n: {0: "batch"} for n in [name_in, *expected]},
                          opset_version=OPSET, dynamo=False)


def reference(job: ExportJob):
    """The same module run in torch, one image at a time (export fidelity + batch handling)."""
    import torch

    g = geometry(job)
    module = build_module(load_yolo(job.weights).model, g)
    names = ["boxes", "scores", "classes", "num_detections"]

    def ref(images: np.ndarray) -> dict[str, np.ndarray]:
        rows = []
        with torch.no_grad():
            for img in images:
                rows.append([t.numpy()[0] for t in module(torch.from_numpy(img[None]))])
        return {n: np.stack([r[i] for r in rows]) for i, n in enumerate(names)}

    return ref


def ultralytics_predict(job: ExportJob, images: np.ndarray) -> list[np.ndarray]:
    """ultralytics' own predictor (greedy class-aware NMS) on the same weights and settings.

    Returns per image an array [n, 6]: x1, y1, x2, y2, score, class.
    """
    g = geometry(job)
    yolo = load_yolo(job.weights)
    # the predictor takes OpenCV-style BGR arrays and flips them to RGB itself
    results = yolo.predict([np.ascontiguousarray(img[..., ::-1]) for img in images], imgsz=(g["h"], g["w"]),
                           conf=g["score_threshold"], iou=g["iou_threshold"], max_det=g["k"],
                           agnostic_nms=False, verbose=False, device="cpu")
    out = []
    for r in results:
        b = r.boxes
        out.append(np.concatenate([b.xyxy.numpy(), b.conf.numpy()[:, None], b.cls.numpy()[:, None]], 1))
    return out
