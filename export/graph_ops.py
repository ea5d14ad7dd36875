"""Torch building blocks that end up INSIDE exported graphs (pre- and post-processing).

Everything here is batched and fixed-size so it exports to ONNX (opset 17) and builds in
TensorRT: no data-dependent shapes, no Python loops over images or boxes.
"""
from __future__ import annotations

import torch
from torch import nn


class ImagePreprocess(nn.Module):
    """uint8 NHWC RGB -> float32 NCHW, (x - mean) / std per channel (0..255 scale).

    `bgr=True` flips channels for networks trained on BGR (OpenCV-read) images.
    """

    def __init__(self, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), bgr: bool = False):
        super().__init__()
        order = [2, 1, 0] if bgr else [0, 1, 2]
        self.register_buffer("mean", torch.tensor([mean[i] for i in range(3)]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("inv_std", 1.0 / torch.tensor([std[i] for i in range(3)]).view(1, 3, 1, 1), persistent=False)
        self.bgr = bgr
        self.order = order

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2).float()
        if self.bgr:
            x = x.flip(1)
        # mean/std are given in the network's channel order
        return (x - self.mean) * self.inv_std


def l2_normalize(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(eps)


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of every box pair: a [B,N,4], b [B,M,4] (x1,y1,x2,y2) -> [B,N,M]."""
    area_a = (a[..., 2] - a[..., 0]).clamp_min(0) * (a[..., 3] - a[..., 1]).clamp_min(0)
    area_b = (b[..., 2] - b[..., 0]).clamp_min(0) * (b[..., 3] - b[..., 1]).clamp_min(0)
    lt = torch.maximum(a[..., :, None, :2], b[..., None, :, :2])
    rb = torch.minimum(a[..., :, None, 2:], b[..., None, :, 2:])
    wh = (rb - lt).clamp_min(0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area_a[..., :, None] + area_b[..., None, :] - inter).clamp_min(1e-9)


def gather_rows(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x [B,N,...], idx [B,K] -> x[b, idx[b]] as [B,K,...] (exports as GatherElements)."""
    tail = x.shape[2:]
    index = idx.reshape(idx.shape[0], idx.shape[1], *([1] * len(tail))).expand(idx.shape[0], idx.shape[1], *tail)
    return torch.gather(x, 1, index)


NMS_ITERATIONS = 8


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, *, candidates: int, max_out: int,
             iou_threshold: float, score_threshold: float, classes: torch.Tensor | None = None,
             extras: tuple[torch.Tensor, ...] = (), iterations: int = NMS_ITERATIONS):
    """Batched, fixed-size NMS with greedy NMS's result ("Cluster-NMS", Zheng et al. 2020).

    Takes each image's top `candidates` boxes by score. One matrix step drops a box when a
    higher-scoring box that is still kept overlaps it above `iou_threshold`; the first step
    (every box kept) is YOLACT's Fast NMS, which also lets already-dropped boxes suppress and
    so drops too much in crowded scenes. Repeating the step converges to exactly what the
    greedy loop keeps; `iterations` bounds the chain of suppressions followed (8 covers
    every real image we tried; a longer chain falls back towards Fast NMS). Then keeps the best
    `max_out`. With `classes`, boxes of different classes never suppress each other. Returns
    boxes [B,K,4], scores [B,K], classes, extras (row-aligned) and the per-image count [B,1]
    (int32); rows beyond the count are zeros.
    """
    n = scores.shape[1]
    c = min(candidates, n)
    top, idx = scores.topk(c, dim=1)
    cand_boxes = gather_rows(boxes, idx)
    cand_extras = tuple(gather_rows(e, idx) for e in extras)
    cand_classes = gather_rows(classes, idx) if classes is not None else None
    iou = box_iou(cand_boxes, cand_boxes)
    if cand_classes is not None:
        iou = iou * (cand_classes[:, :, None] == cand_classes[:, None, :]).to(iou.dtype)
    # [b, i, j] = 1 where candidate i ranks above j. Built from a cumsum of the data rather
    # than torch.arange so the exporter does not fold it into a c x c constant (4 MB at c=1000).
    rank = torch.ones_like(top).cumsum(dim=1)
    higher = (rank[:, :, None] < rank[:, None, :]).to(iou.dtype)
    over = ((iou * higher) > iou_threshold).to(iou.dtype)          # [b, i, j]: i may suppress j
    kept = torch.ones_like(top)
    for _ in range(iterations):                                    # unrolled in the graph
        kept = 1.0 - (over * kept[:, :, None]).amax(dim=1)
    keep = (kept > 0.5) & (top > score_threshold)
    kept_scores = torch.where(keep, top, torch.zeros_like(top))
    k = min(max_out, c)
    out_scores, order = kept_scores.topk(k, dim=1)
    valid = out_scores > 0
    count = valid.sum(dim=1, keepdim=True).to(torch.int32)
    mask = valid.to(boxes.dtype)

    def pick(t):
        m = mask.reshape(mask.shape[0], mask.shape[1], *([1] * (t.dim() - 2)))
        return gather_rows(t, order) * m.to(t.dtype)

    out_boxes = pick(cand_boxes)
    out_classes = pick(cand_classes) if cand_classes is not None else None
    out_extras = tuple(pick(e) for e in cand_extras)
    if k < max_out:  # fewer candidates than output rows: pad
        pad = max_out - k
        out_scores = nn.functional.pad(out_scores, (0, pad))
        out_boxes = nn.functional.pad(out_boxes, (0, 0, 0, pad))
        out_classes = nn.functional.pad(out_classes, (0, pad)) if out_classes is not None else None
        out_extras = tuple(nn.functional.pad(e, (0, 0) * (e.dim() - 2) + (0, pad)) for e in out_extras)
    return out_boxes, out_scores, out_classes, out_extras, count


def peak_top_k(heat, k: int):
    """heat [B,C,H,W] in 0..1 -> scores [B,K], classes [B,K], ys, xs [B,K] (float cells) and the
    spatial index [B,K]: 3x3 max-pool keeps local maxima, then top-K over classes x positions."""
    b, c, h, w = heat.shape
    peaks = heat * (torch.nn.functional.max_pool2d(heat, 3, stride=1, padding=1) == heat).to(heat.dtype)
    scores, idx = peaks.reshape(b, -1).topk(k, dim=1)
    classes = torch.div(idx, h * w, rounding_mode="floor")
    spatial = idx - classes * (h * w)
    ys = torch.div(spatial, w, rounding_mode="floor")
    xs = spatial - ys * w
    return scores, classes, ys.to(heat.dtype), xs.to(heat.dtype), spatial


def gather_maps(maps, spatial):
    """maps [B,D,H,W], spatial [B,K] -> [B,K,D] (the D values at each picked position)."""
    b, d = maps.shape[:2]
    flat = maps.reshape(b, d, -1)
    return torch.gather(flat, 2, spatial[:, None, :].expand(b, d, spatial.shape[1])).transpose(1, 2)
