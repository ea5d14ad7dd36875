"""CenterNet (80 COCO classes) with our batched peak/top-K decode inside the graph.

Weights, in the order the family record searches them:

- a third-party CenterNet ONNX with heatmap + box heads (the layout of
  `centernet_mbv3_coco.onnx`: NHWC float input 0..255 RGB, a heatmap [1,H/4,W/4,C] after
  sigmoid, box distances left/top/right/bottom in input pixels from each cell's corner
  (x = col*4, y = row*4) [1,H/4,W/4,4]). Its own decode output is dropped; the two heads are
  made batch-dynamic by export.patch_batch (proven, then checked against per-image runs of
  the file); uint8 NHWC in and our decode around them. The file was trained on a plain
  resize; the gateway letterboxes (docs/export.md says why and what it costs);
- a CenterNet .pth ({"state_dict": ...}, CenterNet's key names) with the msra_resnet
  ResNet-18 layout (resnet18 body, 3 deconv layers, hm/wh/reg heads with head_conv 64);
- else seeded synthetic weights of that ResNet-18 layout.

Peaks are "3x3 max-pool keeps local maxima" + top-K over classes x positions, batched and
fixed-size; rows above the config's score_threshold are valid.
"""
from __future__ import annotations

import numpy as np

from .base import ExportError, ExportJob
from .boxes import iou_matrix
from .onnx_graph import load_onnx, torch_to_onnx, wrap_third_party

DOWN = 4                                   # output stride
# CenterNet's COCO statistics (opts.py), in its BGR channel order (it reads images with cv2).
CENTERNET_MEAN_BGR = (0.408 * 255, 0.447 * 255, 0.470 * 255)
CENTERNET_STD_BGR = (0.289 * 255, 0.274 * 255, 0.278 * 255)
CENTERNET_DECONV = (256, 128, 64)
HEAD_CONV = 64
NUM_CLASSES = 80                           # COCO, the ids gateway/labels.py names
# bus.jpg plain-resized to 512x512, the file's own decode in original pixels
# (../shared/weights/README.md): (class, score, box).
KNOWN_BUS = ((0, 0.77, (45, 396, 221, 902)), (0, 0.59, (223, 406, 339, 865)),
             (0, 0.58, (685, 370, 810, 880)), (5, 0.48, (19, 227, 790, 754)))


# ---------------------------------------------------------------------------------------------
# decode (torch, batched)

def _centernet_decode(k: int, score_threshold: float):
    import torch
    from torch import nn

    from .graph_ops import gather_maps, peak_top_k

    class CtdetDecode(nn.Module):
        """CenterNet ctdet_decode: sigmoid, peaks, top-K; boxes from reg/wh in input pixels."""

        def forward(self, hm, wh, reg):
            scores, classes, ys, xs, spatial = peak_top_k(hm.sigmoid(), k)
            size, off = gather_maps(wh, spatial), gather_maps(reg, spatial)
            cx, cy = xs + off[..., 0], ys + off[..., 1]
            half_w, half_h = size[..., 0] / 2, size[..., 1] / 2
            boxes = torch.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], -1) * DOWN
            return keep_above(boxes, scores, classes, score_threshold)

    return CtdetDecode()


def _ltrb_decode(k: int, score_threshold: float):
    import torch
    from torch import nn

    from .graph_ops import gather_maps, peak_top_k

    class LtrbDecode(nn.Module):
        """heatmap [B,h,w,C] after sigmoid and ltrb [B,h,w,4] (NHWC, input pixels) -> K boxes:
        peaks, top-K, box = (x - l, y - t, x + r, y + b) around the cell corner (x, y) = 4 * (col, row)."""

        def forward(self, heat, ltrb):
            scores, classes, ys, xs, spatial = peak_top_k(heat.permute(0, 3, 1, 2), k)
            d = gather_maps(ltrb.permute(0, 3, 1, 2), spatial)
            x, y = xs * DOWN, ys * DOWN
            boxes = torch.stack([x - d[..., 0], y - d[..., 1], x + d[..., 2], y + d[..., 3]], -1)
            return keep_above(boxes, scores, classes, score_threshold)

    return LtrbDecode()


def keep_above(boxes, scores, classes, score_threshold: float):
    """Sorted top-K rows -> the contract's outputs: rows at or below the threshold zeroed,
    the count of the rest (scores are sorted, so valid rows come first)."""
    import torch

    valid = scores > score_threshold
    m = valid.to(scores.dtype)
    count = valid.sum(dim=1, keepdim=True).to(torch.int32)
    return boxes * m[..., None], scores * m, classes.to(torch.int32) * valid.to(torch.int32), count


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
    if job.weights.path is not None:
        return load_centernet(job.weights.path, NUM_CLASSES)
    return centernet_net(NUM_CLASSES, seed=job.weights.seed)


def _is_onnx(job: ExportJob) -> bool:
    return job.weights.path is not None and job.weights.path.suffix.lower() == ".onnx"


# ---------------------------------------------------------------------------------------------
# a third-party CenterNet ONNX: its heads, batch-dynamic

def onnx_heads(path, size_hw: tuple[int, int]):
    """The file's (heatmap, ltrb) heads as a batch-dynamic graph: (ModelProto, heatmap name,
    ltrb name, input name, the heads-only graph before patching, PatchReport)."""
    import onnx

    from .patch_batch import patch_model

    m = load_onnx(path)
    inits = {i.name for i in m.graph.initializer}
    inputs = [i for i in m.graph.input if i.name not in inits]
    dims = lambda vi: [d.dim_value for d in vi.type.tensor_type.shape.dim]  # noqa: E731
    if len(inputs) != 1 or len(dims(inputs[0])) != 4 or dims(inputs[0])[3] != 3:
        raise ExportError(f"{path.name}: expected one NHWC [N,H,W,3] image input, has "
                          f"{[(i.name, dims(i)) for i in inputs]}")
    if tuple(dims(inputs[0])[1:3]) != tuple(size_hw):
        raise ExportError(f"{path.name} takes {dims(inputs[0])[1]}x{dims(inputs[0])[2]} images; the centernet "
                          f"config says {size_hw[0]}x{size_hw[1]}: set the config's input dims to the file's")
    grid = [size_hw[0] // DOWN, size_hw[1] // DOWN]
    maps = {o.name: dims(o)[3] for o in m.graph.output if len(dims(o)) == 4 and dims(o)[1:3] == grid}
    ltrb = [n for n, c in maps.items() if c == 4]
    heat = [n for n, c in maps.items() if c == NUM_CLASSES]
    if len(ltrb) != 1 or len(heat) != 1:
        raise ExportError(f"{path.name}: expected a heatmap [N,{grid[0]},{grid[1]},{NUM_CLASSES}] and a box head "
                          f"[N,{grid[0]},{grid[1]},4] at stride {DOWN}; outputs at that grid: {maps}")
    producers = {o: n for n in m.graph.node for o in n.output}
    node = producers.get(heat[0])
    while node is not None and node.op_type in ("Transpose", "Identity", "Reshape"):
        node = producers.get(node.input[0])
    if node is None or node.op_type != "Sigmoid":
        raise ExportError(f"{path.name}: heatmap {heat[0]} does not come from a Sigmoid; the decode expects "
                          "probabilities")
    heads = onnx.utils.Extractor(m).extract_model([inputs[0].name], [heat[0], ltrb[0]])
    core, report = patch_model(heads)
    return core, heat[0], ltrb[0], inputs[0].name, heads, report


def _export_onnx(job: ExportJob):
    import onnx
    import torch

    from .patch_batch import check_batch_equivalence

    c = job.contract
    h, w, _ = c.input("images").dims
    k = c.output("scores").dims[0]
    job.progress(f"patching the heads of {job.weights.path.name} to a dynamic batch")
    core, heat, ltrb, core_in, heads, report = onnx_heads(job.weights.path, (h, w))
    job.progress(f"patched core: {report.summary()}")
    heads_path = job.work_dir / "heads.onnx"
    onnx.save(heads, str(heads_path))
    diff = check_batch_equivalence(heads_path, core, batch=2)
    job.progress(f"batch of 2 vs 2 single runs of the file: max abs diff {diff:.2g}")

    class ToFloat(torch.nn.Module):       # the file takes NHWC RGB 0..255 as it is
        def forward(self, images):
            return images.float()

    fh, fw = h // DOWN, w // DOWN
    return wrap_third_party(job, core, core_in, ToFloat(), _ltrb_decode(k, c.float_parameter("score_threshold")),
                            [(heat, "heatmap", (fh, fw, NUM_CLASSES)), (ltrb, "ltrb", (fh, fw, 4))])


# ---------------------------------------------------------------------------------------------
# export

def export(job: ExportJob):
    if _is_onnx(job):
        return _export_onnx(job)
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


# ---------------------------------------------------------------------------------------------
# independent numpy references for export.verify (network per image, numpy decode)

def numpy_peaks(heat: np.ndarray) -> np.ndarray:
    """heat [C,H,W] -> heat where it equals its 3x3 neighbourhood max, else 0."""
    pad = np.pad(heat, ((0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
    win = np.lib.stride_tricks.sliding_window_view(pad, (3, 3), axis=(1, 2)).max(axis=(-1, -2))
    return np.where(win == heat, heat, 0)


def reference(job: ExportJob):
    """A third-party file: its OWN decoded detections, per image. Otherwise the network per
    image in torch, ctdet's decode in numpy."""
    import torch

    c = job.contract
    k, thr = c.output("scores").dims[0], c.float_parameter("score_threshold")
    if _is_onnx(job):
        return _file_decode_reference(job.weights.path, k, thr)
    net = _centernet_module(job)
    mean, std = np.array(CENTERNET_MEAN_BGR, np.float32), np.array(CENTERNET_STD_BGR, np.float32)

    def run(images):
        images, out = _padded_objects(images, k)
        for i, img in enumerate(images):
            x = ((img[..., ::-1].astype(np.float32) - mean) / std).transpose(2, 0, 1)[None].copy()
            with torch.no_grad():
                hm, wh, reg = (t[0].numpy() for t in net(torch.from_numpy(x)))
            heat = numpy_peaks(1 / (1 + np.exp(-hm)))
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


def _padded_objects(images, k: int):
    """(the image batch from a bare array or verify's feed, zeroed contract outputs for it)."""
    images = images["images"] if isinstance(images, dict) else images
    n = len(images)
    return images, {"boxes": np.zeros((n, k, 4), np.float32), "scores": np.zeros((n, k), np.float32),
                    "classes": np.zeros((n, k), np.int32), "num_detections": np.zeros((n, 1), np.int32)}


def _file_decode_reference(path, k: int, thr: float):
    """The file's own `detections` output [1,100,6] (x1,y1,x2,y2, score, class), run per image."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name_in = sess.get_inputs()[0].name
    det = next((o.name for o in sess.get_outputs() if len(o.shape) == 3 and o.shape[-1] == 6), None)
    if det is None:
        raise ExportError(f"{path.name} has no [N,K,6] decoded-detections output to compare against")

    def run(images):
        images, out = _padded_objects(images, k)
        for i, img in enumerate(images):
            d = sess.run([det], {name_in: img[None].astype(np.float32)})[0][0]
            d = d[np.argsort(-d[:, 4], kind="stable")]
            d = d[d[:, 4] > thr][:k]
            m = len(d)
            out["boxes"][i, :m], out["scores"][i, :m], out["classes"][i, :m] = d[:, :4], d[:, 4], d[:, 5]
            out["num_detections"][i, 0] = m
        return out

    return run


def known_answers(contract, sess):
    """For export.verify: the published answer of the third-party file on bus.jpg (resized to
    the input without letterbox, as the file was trained), in original pixels."""
    meta = sess.get_modelmeta().custom_metadata_map
    if not meta.get("weights_source", "").lower().endswith(".onnx"):
        return [("bus.jpg (known answer)", None, "needs the third-party CenterNet ONNX (not these weights)")]
    import cv2

    from .samples import ultralytics_photo

    bus = ultralytics_photo("bus.jpg")
    h, w, _ = contract.input("images").dims
    names = [o.name for o in sess.get_outputs()]
    out = dict(zip(names, sess.run(names, {"images": cv2.resize(bus, (w, h), interpolation=cv2.INTER_LINEAR)[None]})))
    n = int(out["num_detections"][0, 0])
    scale = np.array([bus.shape[1] / w, bus.shape[0] / h] * 2, np.float32)
    boxes, scores, classes = out["boxes"][0, :n] * scale, out["scores"][0, :n], out["classes"][0, :n]
    worst_iou, worst_score = 1.0, 0.0
    for cls, score, box in KNOWN_BUS:
        same = np.flatnonzero(classes == cls)
        ious = iou_matrix(np.array([box], np.float32), boxes[same])[0]
        j = same[int(np.argmax(ious))] if len(ious) else None
        worst_iou = min(worst_iou, float(ious.max(initial=0.0)))
        worst_score = max(worst_score, abs(float(scores[j]) - score) if j is not None else 1.0)
    ok = worst_iou >= 0.98 and worst_score <= 0.01
    return [("bus.jpg (known answer)", ok, f"{n} detections; the 4 published ones matched with IoU >= "
             f"{worst_iou:.3f}, score within {worst_score:.3f}")]
