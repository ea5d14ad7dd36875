"""SCRFD face detection (5 landmarks): a third-party SCRFD ONNX, batch-patched, wrapped in
uint8 preprocessing and a batched anchor decode + batched NMS (greedy NMS's result), joined into ONE graph.

    images uint8 [B,640,640,3] RGB --pre (torch)--> float [B,3,640,640], (x-127.5)/128
        --core (the SCRFD file, patched by export.patch_batch)--> 9 head outputs
        --decode (torch)--> boxes [B,K,4], scores [B,K], landmarks [B,K,5,2], num_detections [B,1]

The pre/post parts are exported from torch and joined with onnx.compose (core names prefixed
"core/"), so the third-party weights are used byte-for-byte. Without a weights file a small
seeded SCRFD-style network with the same head layout stands in (loudly: see the runner).
"""
from __future__ import annotations

import numpy as np

from .base import ExportError, ExportJob
from .onnx_graph import load_onnx, torch_to_onnx, wrap_third_party

STRIDES = (8, 16, 32)
ANCHORS_PER_CELL = 2
MEAN, STD = 127.5, 128.0          # insightface: blobFromImage(1/128, mean 127.5, swapRB=True) -> RGB
NMS_CANDIDATES = 1000             # per image, before NMS; bounded so the IoU matrix stays small
HEAD_WIDTHS = {1: "score", 4: "bbox", 10: "kps"}


# ---------------------------------------------------------------------------------------------
# torch parts

def _anchor_centers(size_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Anchor centres [N,2] (x,y) and their stride [N,1], in the order SCRFD's heads emit rows:
    stride by stride, row-major cells, ANCHORS_PER_CELL consecutive rows per cell."""
    centers, strides = [], []
    for s in STRIDES:
        h, w = size_hw[0] // s, size_hw[1] // s
        ys, xs = np.mgrid[:h, :w]
        c = np.stack([xs, ys], axis=-1).reshape(-1, 2).astype(np.float32) * s
        c = np.repeat(c, ANCHORS_PER_CELL, axis=0)
        centers.append(c)
        strides.append(np.full((len(c), 1), s, np.float32))
    return np.concatenate(centers), np.concatenate(strides)


def _decode_module(size_hw, k: int, score_threshold: float, iou_threshold: float):
    import torch
    from torch import nn

    from .graph_ops import batched_nms

    class SCRFDDecode(nn.Module):
        """9 head outputs [B,N_s,{1,4,10}] -> top-K faces after NMS (distance2bbox/kps)."""

        def __init__(self):
            super().__init__()
            c, s = _anchor_centers(size_hw)
            self.register_buffer("centers", torch.from_numpy(c), persistent=False)
            self.register_buffer("strides", torch.from_numpy(s), persistent=False)

        def forward(self, s8, s16, s32, b8, b16, b32, k8, k16, k32):
            scores = torch.cat([s8, s16, s32], 1)[..., 0]
            dist = torch.cat([b8, b16, b32], 1) * self.strides
            boxes = torch.cat([self.centers - dist[..., :2], self.centers + dist[..., 2:]], -1)
            kps = torch.cat([k8, k16, k32], 1) * self.strides
            kps = kps.reshape(kps.shape[0], kps.shape[1], 5, 2) + self.centers[:, None, :]
            out_boxes, out_scores, _, (out_kps,), count = batched_nms(
                boxes, scores, candidates=NMS_CANDIDATES, max_out=k, iou_threshold=iou_threshold,
                score_threshold=score_threshold, extras=(kps,))
            return out_boxes, out_scores, out_kps, count

    return SCRFDDecode()


def synthetic_core(seed: int):
    """A small SCRFD-style network (NOT SCRFD's weights): strides 8/16/32, 2 anchors per cell,
    heads emitting [B,N,1] sigmoid scores, [B,N,4] distances, [B,N,10] keypoints like out0..out8."""
    import torch
    from torch import nn

    torch.manual_seed(seed)

    def block(cin, cout):
        return nn.Sequential(nn.Conv2d(cin, cout, 3, 2, 1), nn.BatchNorm2d(cout), nn.ReLU())

    class SyntheticSCRFD(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(block(3, 16), block(16, 32), block(32, 48))      # stride 8
            self.down = nn.ModuleList([nn.Identity(), block(48, 48), block(48, 48)])
            a = ANCHORS_PER_CELL
            self.cls = nn.Conv2d(48, a, 3, 1, 1)
            self.reg = nn.Conv2d(48, 4 * a, 3, 1, 1)
            self.kps = nn.Conv2d(48, 10 * a, 3, 1, 1)

        def forward(self, x):
            f = self.stem(x)
            outs = {"score": [], "bbox": [], "kps": []}
            for down in self.down:
                f = down(f)
                for name, head, width in (("score", self.cls, 1), ("bbox", self.reg, 4), ("kps", self.kps, 10)):
                    y = head(f).permute(0, 2, 3, 1).reshape(f.shape[0], -1, width)
                    outs[name].append(y.sigmoid() if name == "score" else y)
            return (*outs["score"], *outs["bbox"], *outs["kps"])

    return SyntheticSCRFD().eval()


# ---------------------------------------------------------------------------------------------
# export

def head_order(core) -> list[str]:
    """Core output names ordered score s8,s16,s32, bbox s8.., kps s8.. (told apart by width and rows)."""
    by_key = {}
    for o in core.graph.output:
        dims = [d.dim_value for d in o.type.tensor_type.shape.dim]
        if len(dims) < 2 or dims[-1] not in HEAD_WIDTHS:
            raise ExportError(f"SCRFD output {o.name} {dims}: expected [*, N, 1|4|10]")
        by_key[(HEAD_WIDTHS[dims[-1]], dims[-2])] = o.name
    order = []
    for kind in ("score", "bbox", "kps"):
        rows = sorted((n for (k, n) in by_key if k == kind), reverse=True)  # stride 8 has most rows
        if len(rows) != len(STRIDES):
            raise ExportError(f"SCRFD graph has {len(rows)} {kind} heads, expected {len(STRIDES)}")
        order += [by_key[(kind, n)] for n in rows]
    return order


def _core_model(job: ExportJob):
    """The batch-dynamic core ONNX (patched third-party file, or the synthetic stand-in)."""
    import torch

    from .patch_batch import patch_model

    if job.weights.path is not None:
        job.progress(f"patching {job.weights.path.name} to a dynamic batch")
        original = load_onnx(job.weights.path)
    else:
        job.progress(f"building SyntheticSCRFD (seed {job.weights.seed})")
        h, w, _ = job.contract.input("images").dims
        path = job.work_dir / "synthetic_core.onnx"
        names = [f"out{i}" for i in range(9)]
        torch_to_onnx(synthetic_core(job.weights.seed), (torch.zeros(1, 3, h, w),), path, ["images"], names)
        original = load_onnx(path)
    core, report = patch_model(original)
    job.progress(f"patched core: {report.summary()}")
    return original, core


def export(job: ExportJob):

    from .graph_ops import ImagePreprocess

    c = job.contract
    h, w, _ = c.input("images").dims
    k = c.output("scores").dims[0]
    original, core = _core_model(job)
    core_in = core.graph.input[0].name
    heads = head_order(original)

    decode = _decode_module((h, w), k, c.float_parameter("score_threshold"), c.float_parameter("nms_iou_threshold"))
    shapes = [(rows, width) for width in (1, 4, 10) for rows in _rows_per_stride((h, w))]
    post_in = [f"{kind}_{s}" for kind in ("score", "bbox", "kps") for s in STRIDES]
    return wrap_third_party(job, core, core_in, ImagePreprocess(mean=(MEAN,) * 3, std=(STD,) * 3), decode,
                            list(zip(heads, post_in, shapes)))


def _rows_per_stride(size_hw) -> list[int]:
    return [(size_hw[0] // s) * (size_hw[1] // s) * ANCHORS_PER_CELL for s in STRIDES]


# ---------------------------------------------------------------------------------------------
# independent reference for export.verify: the ORIGINAL file, per image, numpy decode + NMS

def reference(job: ExportJob):
    c = job.contract
    h, w, _ = c.input("images").dims
    k = c.output("scores").dims[0]
    score_thr, iou_thr = c.float_parameter("score_threshold"), c.float_parameter("nms_iou_threshold")
    run_one = _original_runner(job)

    def run(images) -> dict[str, np.ndarray]:
        images = images["images"] if isinstance(images, dict) else images
        outs = {"boxes": np.zeros((len(images), k, 4), np.float32), "scores": np.zeros((len(images), k), np.float32),
                "landmarks": np.zeros((len(images), k, 5, 2), np.float32),
                "num_detections": np.zeros((len(images), 1), np.int32)}
        for i, img in enumerate(images):   # one image per run: the original file has batch 1
            x = ((img.astype(np.float32) - MEAN) / STD).transpose(2, 0, 1)[None]
            boxes, scores, kps = numpy_decode(run_one(x), (h, w))
            keep = numpy_nms(boxes, scores, iou_thr, score_thr)[:k]
            m = len(keep)
            outs["boxes"][i, :m], outs["scores"][i, :m], outs["landmarks"][i, :m] = boxes[keep], scores[keep], kps[keep]
            outs["num_detections"][i, 0] = m
        return outs

    return run


KNOWN_ASTRONAUT_BOX = (226.0, 69.0, 339.0, 223.0)   # ../shared/weights/README.md, 640x640 pixels


def astronaut_640() -> np.ndarray:
    import cv2
    from skimage import data

    return cv2.resize(data.astronaut(), (640, 640), interpolation=cv2.INTER_LINEAR)[None]


def known_answers(contract, sess):
    """For export.verify: real SCRFD weights find the astronaut's face at the published box."""
    meta = sess.get_modelmeta().custom_metadata_map
    if meta.get("weights_kind") == "synthetic":
        return [("astronaut face (known answer)", None, "synthetic weights: the known answer needs real SCRFD weights")]
    names = [o.name for o in sess.get_outputs()]
    out = dict(zip(names, sess.run(names, {"images": astronaut_640()})))
    n, score, box = int(out["num_detections"][0, 0]), float(out["scores"][0, 0]), out["boxes"][0, 0]
    err = float(np.abs(box - np.array(KNOWN_ASTRONAUT_BOX)).max())
    ok = n == 1 and abs(score - 0.82) < 0.02 and err <= 4
    return [("astronaut face (known answer)", ok, f"{n} face(s), score {score:.3f}, box {np.round(box, 1).tolist()}, "
             f"max corner error {err:.1f}px")]


def astronaut_face(contract, sess):
    """For export.verify, any face detector with real weights: it finds the astronaut's one
    face where the published SCRFD-2.5G box is (IoU > 0.5)."""
    from .boxes import iou_matrix

    meta = sess.get_modelmeta().custom_metadata_map
    if meta.get("weights_kind") == "synthetic":
        return [("astronaut face vs SCRFD box", None, "synthetic weights: the known answer needs real weights")]
    names = [o.name for o in sess.get_outputs()]
    out = dict(zip(names, sess.run(names, {"images": astronaut_640()})))
    iou = float(iou_matrix(out["boxes"][0, :1], np.array([KNOWN_ASTRONAUT_BOX]))[0, 0])
    n = int(out["num_detections"][0, 0])
    return [("astronaut face vs SCRFD box", n == 1 and iou > 0.5, f"{n} face(s), score {out['scores'][0, 0]:.3f}, IoU {iou:.2f}")]


def _original_runner(job: ExportJob):
    if job.weights.path is None:
        import torch

        net = synthetic_core(job.weights.seed)

        def run_torch(x):   # SyntheticSCRFD already emits score, bbox, kps heads in stride order
            with torch.no_grad():
                return [t.numpy() for t in net(torch.from_numpy(x))]
        return run_torch
    import onnxruntime as ort

    original = load_onnx(job.weights.path)
    order = head_order(original)
    sess = ort.InferenceSession(str(job.weights.path), providers=["CPUExecutionProvider"])
    return lambda x: [o.reshape(-1, o.shape[-1]) for o in sess.run(order, {sess.get_inputs()[0].name: x})]


def numpy_decode(heads: list[np.ndarray], size_hw) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """insightface SCRFD.forward/detect decode for one image: distance2bbox, distance2kps."""
    scores, boxes, kps = [], [], []
    for i, s in enumerate(STRIDES):
        hh, ww = size_hw[0] // s, size_hw[1] // s
        centers = (np.stack(np.mgrid[:hh, :ww][::-1], axis=-1).astype(np.float32) * s).reshape(-1, 2)
        centers = np.stack([centers] * ANCHORS_PER_CELL, axis=1).reshape(-1, 2)
        d = heads[3 + i].reshape(-1, 4) * s
        boxes.append(np.concatenate([centers - d[:, :2], centers + d[:, 2:]], axis=1))
        kp = heads[6 + i].reshape(-1, 5, 2) * s
        kps.append(kp + centers[:, None, :])
        scores.append(heads[i].reshape(-1))
    return np.concatenate(boxes), np.concatenate(scores), np.concatenate(kps)


def numpy_nms(boxes, scores, iou_thr, score_thr, candidates: int = NMS_CANDIDATES) -> np.ndarray:
    """Indices kept by greedy NMS (the insightface/OpenCV loop), best first, over the top
    `candidates` by score: what graph_ops.batched_nms converges to, written independently."""
    order = np.argsort(-scores, kind="stable")[:candidates]
    order = order[scores[order] > score_thr]
    b = boxes[order].astype(np.float64)
    area = np.prod(np.clip(b[:, 2:] - b[:, :2], 0, None), axis=-1)
    alive = np.ones(len(order), bool)
    for i in range(len(order)):   # reference code: the sequential loop on purpose
        if not alive[i]:
            continue
        lt, rb = np.maximum(b[i, :2], b[i + 1:, :2]), np.minimum(b[i, 2:], b[i + 1:, 2:])
        inter = np.prod(np.clip(rb - lt, 0, None), axis=-1)
        iou = inter / np.maximum(area[i] + area[i + 1:] - inter, 1e-9)
        alive[i + 1:] &= iou <= iou_thr
    return order[alive]
