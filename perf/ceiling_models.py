"""The networks `perf.gpu_ceiling` times: the project's own torch modules, built offline.

Every network of the contract is a family here. One whose config names a torch builder
(parameter gpu_ceiling, contract/facts.py) is timed as the project's torch module; any other
(a third-party graph) as its exported ONNX in ONNX Runtime's GPU providers. Each builder
returns a Candidate (a module and a function making its inputs at a batch size, sizes read
from config.pbtxt) or raises Unmeasurable with the exact reason (a package this host lacks,
no GPU runtime for a third-party ONNX graph, a missing file).
Weights are synthetic (seeded): compute cost does not depend on their values, so the
ceiling is the real architecture's, whatever weights a deployment serves.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Callable

import numpy as np

import contract
from contract.facts import facts, networks

SEED = 0


def families(repository=contract.MODEL_REPOSITORY) -> tuple[str, ...]:
    """Every network of the contract, those with a torch builder first."""
    contracts = contract.load_all(repository)
    nets = networks(contracts)
    return tuple(sorted(nets, key=lambda n: facts(contracts[n]).gpu_ceiling is None))


class Unmeasurable(RuntimeError):
    """This family cannot be measured on this host; the message says exactly why."""


@dataclass
class Candidate:
    name: str
    module: object                          # torch.nn.Module, or an OnnxCandidate runner
    inputs: Callable[[int, str], tuple]     # (batch, device) -> input tensors
    runtime: str                            # "torch" or "onnxruntime <provider>"
    note: str = ""


def _need(package: str, why: str) -> None:
    try:
        found = importlib.util.find_spec(package) is not None
    except ImportError:
        found = False
    if not found:
        raise Unmeasurable(f"needs {package} ({why}), which is not installed here: pip install {package}")


def _frames(c: contract.ModelContract, name: str = "images"):
    import torch

    h, w, ch = c.input(name).dims

    def make(batch: int, device: str):
        g = torch.Generator().manual_seed(SEED)
        return (torch.randint(0, 256, (batch, h, w, ch), dtype=torch.uint8, generator=g).to(device),)
    return make


def build(name: str, onnx_root=contract.MODEL_REPOSITORY) -> Candidate:
    known = families()
    if name not in known:
        raise Unmeasurable(f"unknown family {name!r}; known: {', '.join(known)}")
    _need("torch", "every torch module")
    c = contract.load(name)
    builder = facts(c).gpu_ceiling
    if builder is None:
        return _onnx(name, onnx_root)
    if builder not in TORCH_BUILDERS:
        raise Unmeasurable(f"{c.path}: gpu_ceiling {builder!r} names no builder here; known: {', '.join(TORCH_BUILDERS)}")
    return TORCH_BUILDERS[builder](c)


def _arcface(c):
    import torch

    from export.arcface import MEAN, STD, synthetic_iresnet
    from export.graph_ops import ImagePreprocess, l2_normalize

    class ArcFace(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.pre, self.net = ImagePreprocess((MEAN,) * 3, (STD,) * 3), synthetic_iresnet(SEED)

        def forward(self, faces):
            return l2_normalize(self.net(self.pre(faces)))
    return Candidate("arcface", ArcFace().eval(), _frames(c, "faces"), "torch", "IResNet-50, synthetic weights")


def _face_align(c):
    import torch

    from export.face_align import build_module, template

    opt = c.with_variable_dims("opt")
    h, w, _ = opt.input("images").dims
    faces, size = opt.input("landmarks").dims[0], opt.output("crops").dims[1]

    def make(batch, device):
        lmk = np.broadcast_to(template(size) * 1.5 + 200.0, (batch, faces, 5, 2)).astype(np.float32)
        return _frames(opt)(batch, device) + (torch.from_numpy(lmk.copy()).to(device),)
    return Candidate("face_align", build_module(h, w, size), make, "torch",
                     f"{faces} faces per image (variable_dim_range opt)")


def _clip_resize(c):
    from export.mobileclip import resize_module

    return Candidate("clip_resize", resize_module(tuple(c.output("clip_images").dims[:2])), _frames(c), "torch")


def _centernet(c):
    import torch

    from export.centernet import CENTERNET_MEAN_BGR, CENTERNET_STD_BGR, _centernet_decode, centernet_net
    from export.graph_ops import ImagePreprocess

    _need("torchvision", "the ResNet-18 backbone")
    k = c.output("scores").dims[0]

    class Whole(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.pre = ImagePreprocess(mean=CENTERNET_MEAN_BGR, std=CENTERNET_STD_BGR, bgr=True)
            self.net = centernet_net(80, seed=SEED)
            self.decode = _centernet_decode(k, c.float_parameter("score_threshold"))

        def forward(self, images):
            return self.decode(*self.net(self.pre(images)))
    return Candidate("centernet", Whole().eval(), _frames(c), "torch", "ResNet-18 CenterNet + decode, synthetic")


def _yolo(c):
    _need("ultralytics", "the YOLO11s network definition")
    import torch
    from ultralytics.nn.tasks import DetectionModel

    from export import registry
    from export.yolo import build_module, geometry

    torch.manual_seed(SEED)
    g = geometry(type("Job", (), {"contract": c})())
    det = DetectionModel(registry.record(c.name).architecture, verbose=False).eval()
    return Candidate("yolo", build_module(det, g), _frames(c), "torch", "YOLO11s + in-graph NMS, synthetic")


def _open_clip_model():
    _need("open_clip", "the MobileCLIP2 definition (open_clip_torch, and timm)")
    import open_clip
    import torch

    from export.mobileclip import OPEN_CLIP_MODEL

    torch.manual_seed(SEED)
    return open_clip.create_model(OPEN_CLIP_MODEL, pretrained=None).eval()


def _mobileclip_image(c):
    import torch

    from export.graph_ops import ImagePreprocess, l2_normalize
    from export.mobileclip import preprocess_config

    model, pre = _open_clip_model(), preprocess_config()

    class Image(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.pre = ImagePreprocess([255.0 * m for m in pre["mean"]], [255.0 * s for s in pre["std"]])
            self.visual = model.visual

        def forward(self, images):
            return l2_normalize(self.visual(self.pre(images)))
    return Candidate("mobileclip_image", Image().eval(), _frames(c), "torch", "not re-parameterised, synthetic")


def _mobileclip_text(c):
    import torch

    from export.graph_ops import l2_normalize

    model = _open_clip_model()
    context = c.input("tokens").dims[0]

    class Text(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model   # a submodule, so .to(device) moves it

        def forward(self, tokens):
            return l2_normalize(self.model.encode_text(tokens.long()))

    def make(batch, device):
        t = torch.zeros(batch, context, dtype=torch.int32)
        t[:, 0], t[:, 1:9], t[:, 9] = 49406, 1000, 49407
        return (t.to(device),)
    return Candidate("mobileclip_text", Text().eval(), make, "torch", "synthetic")


# gpu_ceiling (a config parameter) -> the torch module built for that network
TORCH_BUILDERS = {"arcface": _arcface, "face_align": _face_align, "clip_resize": _clip_resize,
                  "centernet": _centernet, "yolo": _yolo, "mobileclip_image": _mobileclip_image,
                  "mobileclip_text": _mobileclip_text}


class OnnxRunner:
    """session.run with host arrays: includes host<->device copies, so a floor on the ceiling."""

    def __init__(self, session, names):
        self.session, self.names = session, names

    def __call__(self, *arrays):
        return self.session.run(None, {n: a.cpu().numpy() for n, a in zip(self.names, arrays)})


def _onnx(name: str, root) -> Candidate:
    path = root / name / "1" / "model.onnx"
    if importlib.util.find_spec("onnxruntime") is None:
        raise Unmeasurable("a third-party ONNX graph (no torch module in the project) and onnxruntime is not installed")
    import onnxruntime as ort

    gpu = [p for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider") if p in ort.get_available_providers()]
    if not gpu:
        raise Unmeasurable(f"a third-party ONNX graph (no torch module in the project) and no GPU ONNX runtime here: "
                           f"onnxruntime {ort.__version__} has {ort.get_available_providers()} (install "
                           "onnxruntime-gpu, or build TensorRT plans: make export-engines)")
    if not path.is_file():
        raise Unmeasurable(f"{path} is not here (a build artifact: make export-onnx MODELS={name}, or carry it)")
    opts = [{"trt_fp16_enable": True}] if gpu[0] == "TensorrtExecutionProvider" else [{}]
    session = ort.InferenceSession(str(path), providers=[gpu[0]], provider_options=opts)
    c = contract.load(name)
    return Candidate(name, OnnxRunner(session, [t.name for t in c.inputs]), _frames(c, c.inputs[0].name),
                     f"onnxruntime {gpu[0]}", "session.run with host copies")
