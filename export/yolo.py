"""YOLO11s (ultralytics, offline) with decode, class-aware NMS and top-K inside the graph.

uint8 NHWC -> x/255 -> ultralytics DetectionModel -> [B, 4+nc, N] (cx,cy,w,h in input
pixels, per-class sigmoid scores) -> x1y1x2y2, best class per anchor -> batched class-aware NMS
-> boxes/scores/classes/num_detections padded to the contract's K.

Weights: a user's ultralytics checkpoint (yolo11s.pt), else synthetic: yolo11s.yaml built
under torch.manual_seed(seed), then made non-degenerate (see `_calibrate_synthetic`).
"""
from __future__ import annotations

import os

import numpy as np

from .base import OPSET, ExportError, ExportJob, WeightsSource
from .onnx_graph import torch_to_onnx

# The batched NMS compares the top candidates pairwise ([B,C,C] IoU). ultralytics' predictor looks
# at up to 30000 boxes with a sequential loop; 1000 covers every realistic image above the
# config's score threshold and keeps the matrix at 4 MB per image. The config may set
# "nms_candidates" to change it.
DEFAULT_CANDIDATES = 1000
# Synthetic weights: share of anchors whose best class clears the score threshold on the
# calibration images; enough boxes to exercise NMS and top-K without flooding them.
_SYNTHETIC_POSITIVE_RATE = 0.005
_SYNTHETIC_LOGIT_STD = 0.5


def load_yolo(weights: WeightsSource, architecture: str):
    """An ultralytics YOLO object on the given weights (else `architecture`, an ultralytics
    model yaml, with synthetic weights), built without network access."""
    os.environ.setdefault("YOLO_OFFLINE", "1")
    import torch
    from ultralytics import YOLO

    if weights.synthetic:
        torch.manual_seed(weights.seed)
        yolo = YOLO(architecture)
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
    """One thread: BatchNorm statistics summed in a fixed order, so the export and verify's
    reference (another process) rebuild bit-identical weights; see _calibrate_on_one_thread."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _calibrate_on_one_thread(det, seed)
    finally:
        torch.set_num_threads(threads)


def _calibrate_on_one_thread(det, seed: int) -> None:
    """Fresh ultralytics init is degenerate at eval: BatchNorm's default statistics shrink
    activations to zero over ~100 layers, so every anchor gets the same box and a score of
    1e-4. Re-estimate BN statistics on two photos (one train-mode pass), then scale each
    level's class conv to a moderate logit spread and set its bias so ~0.5% of anchors clear
    the threshold: outputs then differ per image and per anchor, and NMS/top-K get real work.
    Deterministic: the photos ship with ultralytics and the init is seeded.
    """
    import torch
    from torch import nn

    calib = _calibration_images()
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
    target = float(torch.logit(torch.tensor(0.25)))
    with torch.no_grad():
        for conv in cls_convs:
            conv.bias.zero_()
        logits = torch.logit(det(calib)[0][:, 4:].clamp(1e-6, 1 - 1e-6))    # [B,nc,N]
        start = 0
        for conv, stride in zip(cls_convs, head.stride.tolist()):
            n = (calib.shape[-1] // int(stride)) ** 2
            level = logits[:, :, start:start + n]
            # a small logit spread keeps scores off sigmoid's flat ends (no float ties in top-K)
            scale = _SYNTHETIC_LOGIT_STD / float(level.std())
            conv.weight.mul_(scale)
            best = level.amax(1).flatten() * scale
            conv.bias.fill_(target - float(torch.quantile(best, 1 - _SYNTHETIC_POSITIVE_RATE)))
            start += n


def _calibration_images():
    """The two photos shipped inside the ultralytics wheel (bus, zidane) and their mirror
    images, 640x640 RGB in [0,1]. Noise images do not work: natural photos push activations
    several times higher, and a bias set on noise floods the output with boxes."""
    import cv2
    import torch
    from ultralytics.utils import ASSETS

    imgs = []
    for name in ("bus.jpg", "zidane.jpg"):
        bgr = cv2.imread(str(ASSETS / name))
        if bgr is None:
            raise ExportError(f"yolo: the ultralytics wheel lacks {ASSETS / name} (needed for synthetic weights)")
        rgb = cv2.resize(bgr[..., ::-1], (640, 640), interpolation=cv2.INTER_AREA)
        imgs += [rgb, rgb[:, ::-1]]
    return torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float() / 255.0


def sample_inputs(contract, batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """For verify: the wheel's two photos under random zoom, shift and brightness. Uniform
    noise is no image: it floods a synthetic detector with near-equal scores whose order
    is then decided by float rounding."""
    import cv2

    spec = contract.inputs[0]
    h, w = spec.dims[:2]
    photos = (_calibration_images().permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    out = np.empty((batch, h, w, 3), np.uint8)
    for i in range(batch):
        img = photos[rng.integers(len(photos))]
        zoom = rng.uniform(0.8, 1.0)
        ch, cw = int(img.shape[0] * zoom), int(img.shape[1] * zoom)
        y0, x0 = rng.integers(0, img.shape[0] - ch + 1), rng.integers(0, img.shape[1] - cw + 1)
        crop = cv2.resize(img[y0:y0 + ch, x0:x0 + cw], (w, h), interpolation=cv2.INTER_LINEAR)
        out[i] = np.clip(crop * rng.uniform(0.7, 1.2), 0, 255).astype(np.uint8)
    return {spec.name: out}


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

    from .graph_ops import ImagePreprocess, batched_nms

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
            boxes, scores, classes, _, count = batched_nms(
                boxes, scores, candidates=g["candidates"], max_out=g["k"], iou_threshold=g["iou_threshold"],
                score_threshold=g["score_threshold"], classes=classes)
            # like ultralytics' predictor: NMS on raw boxes, then clip to the image
            wh = torch.stack([boxes.new_full((), g["w"]), boxes.new_full((), g["h"])])
            boxes = torch.minimum(boxes.clamp_min(0), wh.repeat(2))   # made on boxes' device
            return boxes, scores, classes.to(torch.int32), count

    return YoloDetect().eval()


def export(job: ExportJob) -> None:
    import torch

    g = geometry(job)
    job.progress("building YOLO11s" + (" (synthetic, calibrating BN)" if job.weights.synthetic else ""))
    module = build_module(load_yolo(job.weights, job.architecture).model, g)
    name_in = job.contract.inputs[0].name
    names_out = [t.name for t in job.contract.outputs]
    expected = ["boxes", "scores", "classes", "num_detections"]
    if sorted(names_out) != sorted(expected):
        raise ExportError(f"yolo: contract outputs {names_out}, this exporter produces {expected}")
    dummy = torch.zeros(2, g["h"], g["w"], 3, dtype=torch.uint8)
    job.progress(f"torch.onnx.export (opset {OPSET}), K={g['k']}, score>{g['score_threshold']}, "
                 f"iou<={g['iou_threshold']}")
    # torch emits outputs in forward's order; the contract may list them in any order
    torch_to_onnx(module, (dummy,), job.out_path, [name_in], expected)


def reference(job: ExportJob):
    """The same module run in torch, one image at a time (export fidelity + batch handling).

    ref({"images": uint8 [B,H,W,3]}) -> the four outputs."""
    import torch

    g = geometry(job)
    module = build_module(load_yolo(job.weights, job.architecture).model, g)
    names = ["boxes", "scores", "classes", "num_detections"]
    in_name = job.contract.inputs[0].name

    def ref(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = []
        with torch.no_grad():
            for img in inputs[in_name]:
                rows.append([t.numpy()[0] for t in module(torch.from_numpy(img[None]))])
        return {n: np.stack([r[i] for r in rows]) for i, n in enumerate(names)}

    return ref


def ultralytics_predict(job: ExportJob, images: np.ndarray) -> list[np.ndarray]:
    """ultralytics' own predictor (greedy class-aware NMS) on the same weights and settings.

    Returns per image an array [n, 6]: x1, y1, x2, y2, score, class.
    """
    g = geometry(job)
    yolo = load_yolo(job.weights, job.architecture)
    # the predictor takes OpenCV-style BGR arrays and flips them to RGB itself
    results = yolo.predict([np.ascontiguousarray(img[..., ::-1]) for img in images], imgsz=(g["h"], g["w"]),
                           conf=g["score_threshold"], iou=g["iou_threshold"], max_det=g["k"],
                           agnostic_nms=False, verbose=False, device="cpu")
    out = []
    for r in results:
        b = r.boxes
        out.append(np.concatenate([b.xyxy.numpy(), b.conf.numpy()[:, None], b.cls.numpy()[:, None]], 1))
    return out
