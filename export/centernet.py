"""CenterNet ctdet (80 COCO classes) with the batched peak/top-K decode inside the graph.

Weights: a CenterNet .pth ({"state_dict": ...}, CenterNet's key names) with the msra_resnet
ResNet-18 layout (resnet18 body, 3 deconv layers, hm/wh/reg heads with head_conv 64), else
seeded synthetic weights of that layout. Input uint8 NHWC RGB; peaks are "3x3 max-pool keeps
local maxima" + top-K over classes x positions, batched and fixed-size.
"""
from __future__ import annotations

import numpy as np

from .base import ExportError, ExportJob
from .onnx_graph import torch_to_onnx

MODELS = ("centernet",)
DOWN = 4                                   # output stride
# CenterNet's COCO statistics (opts.py), in its BGR channel order (it reads images with cv2).
CENTERNET_MEAN_BGR = (0.408 * 255, 0.447 * 255, 0.470 * 255)
CENTERNET_STD_BGR = (0.289 * 255, 0.274 * 255, 0.278 * 255)
CENTERNET_DECONV = (256, 128, 64)
HEAD_CONV = 64


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
            valid = scores > score_threshold          # scores are sorted: valid rows come first
            m = valid.to(scores.dtype)
            count = valid.sum(dim=1, keepdim=True).to(torch.int32)
            return boxes * m[..., None], scores * m, classes.to(torch.int32) * valid.to(torch.int32), count

    return CtdetDecode()


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

def export(job: ExportJob) -> None:
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
    """The network per image in torch, ctdet's decode in numpy."""
    import torch

    c = job.contract
    k, thr = c.output("scores").dims[0], c.float_parameter("score_threshold")
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


