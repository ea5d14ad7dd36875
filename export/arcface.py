"""ArcFace IResNet-50 (insightface w600k_r50 layout): uint8 faces -> L2-normalised embeddings.

Weights, in order: a user `w600k_r50.onnx` (wrapped as-is with uint8 preprocessing and an
L2 norm via onnx.compose), a user torch state dict for insightface's `iresnet50`, else
seeded synthetic weights. The IResNet below mirrors insightface's arcface_torch
`backbones/iresnet.py` parameter for parameter, so its state dicts load strictly.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import OPSET, ExportError, ExportJob, WeightsSource
from .onnx_graph import torch_to_onnx

LAYERS_R50 = (3, 4, 14, 3)
# insightface ArcFaceONNX: blobFromImages(scalefactor=1/127.5, mean=127.5, swapRB=True) -> RGB.
MEAN, STD = 127.5, 127.5
EMBEDDING_DIM = 512   # fixed by the w600k_r50 layout; checked against the contract


# ---------------------------------------------------------------- the network (torch, lazy)

def build_iresnet(layers=LAYERS_R50, num_features: int = EMBEDDING_DIM):
    """insightface's IResNet (arcface_torch/backbones/iresnet.py) with the same module names."""
    import torch
    from torch import nn

    def conv3x3(cin, cout, stride=1):
        return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)

    class IBasicBlock(nn.Module):
        def __init__(self, inplanes, planes, stride=1, downsample=None):
            super().__init__()
            self.bn1 = nn.BatchNorm2d(inplanes, eps=1e-05)
            self.conv1 = conv3x3(inplanes, planes)
            self.bn2 = nn.BatchNorm2d(planes, eps=1e-05)
            self.prelu = nn.PReLU(planes)
            self.conv2 = conv3x3(planes, planes, stride)
            self.bn3 = nn.BatchNorm2d(planes, eps=1e-05)
            self.downsample = downsample

        def forward(self, x):
            out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
            identity = x if self.downsample is None else self.downsample(x)
            return out + identity

    class IResNet(nn.Module):
        fc_scale = 7 * 7

        def __init__(self):
            super().__init__()
            self.inplanes = 64
            self.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(64, eps=1e-05)
            self.prelu = nn.PReLU(64)
            self.layer1 = self._make_layer(64, layers[0])
            self.layer2 = self._make_layer(128, layers[1])
            self.layer3 = self._make_layer(256, layers[2])
            self.layer4 = self._make_layer(512, layers[3])
            self.bn2 = nn.BatchNorm2d(512, eps=1e-05)
            self.dropout = nn.Dropout(p=0.0)
            self.fc = nn.Linear(512 * self.fc_scale, num_features)
            self.features = nn.BatchNorm1d(num_features, eps=1e-05)

        def _make_layer(self, planes, blocks):
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes, 1, stride=2, bias=False),
                                       nn.BatchNorm2d(planes, eps=1e-05))
            mods = [IBasicBlock(self.inplanes, planes, 2, downsample)]
            self.inplanes = planes
            mods += [IBasicBlock(planes, planes) for _ in range(1, blocks)]
            return nn.Sequential(*mods)

        def forward(self, x):
            x = self.prelu(self.bn1(self.conv1(x)))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            x = self.dropout(torch.flatten(self.bn2(x), 1))
            return self.features(self.fc(x))

    return IResNet()


def synthetic_iresnet(seed: int, layers=LAYERS_R50):
    """Deterministic weights that keep activations O(1) through 24 residual blocks.

    insightface's own init (conv ~ N(0, 0.1)) grows activations by ~2.4x per conv at
    eval-mode BatchNorm; fp32 parity checks need sane magnitudes, so: variance-preserving
    convs, damped residual branches (bn3 gain 0.2), and non-trivial BN statistics so the
    BN folding paths are exercised.
    """
    import torch
    from torch import nn

    torch.manual_seed(seed)
    net = build_iresnet(layers)
    g = torch.Generator().manual_seed(seed)
    for name, m in net.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            fan_in = m.weight[0].numel()
            with torch.no_grad():
                m.weight.normal_(0.0, fan_in ** -0.5, generator=g)
                if getattr(m, "bias", None) is not None:
                    m.bias.normal_(0.0, 0.01, generator=g)
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
            n = m.num_features
            with torch.no_grad():
                gain = 0.2 if name.endswith("bn3") else 1.0
                m.weight.copy_(gain * (1.0 + 0.1 * torch.randn(n, generator=g)))
                m.bias.copy_(0.05 * torch.randn(n, generator=g))
                m.running_mean.copy_(0.05 * torch.randn(n, generator=g))
                m.running_var.copy_(1.0 + 0.1 * torch.rand(n, generator=g))
    return net.eval()


def load_torch_backbone(weights: WeightsSource):
    """The IResNet-50 for a synthetic or .pth source (strict load: a wrong file fails loudly)."""
    import torch

    if weights.synthetic:
        return synthetic_iresnet(weights.seed)
    net = build_iresnet()
    try:
        state = torch.load(weights.path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a corrupt/foreign file
        raise ExportError(f"arcface: cannot read {weights.path} as a torch state dict: {exc}") from exc
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ExportError(f"arcface: {weights.path} holds a {type(state).__name__}, expected a state dict")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    try:
        missing, unexpected = net.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches raise even when strict=False
        raise ExportError(f"arcface: {weights.path} is not an iresnet50 state dict: {exc}") from exc
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise ExportError(f"arcface: {weights.path} is not an iresnet50 state dict "
                          f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    return net.eval()


def _check_contract(job: ExportJob) -> tuple[int, int]:
    spec_in, spec_out = job.contract.inputs[0], job.contract.outputs[0]
    h, w, c = spec_in.dims
    if c != 3 or spec_out.dims != (EMBEDDING_DIM,):
        raise ExportError(f"arcface: contract dims {spec_in.dims} -> {spec_out.dims} do not fit IResNet-50 "
                          f"(HxWx3 -> {EMBEDDING_DIM})")
    return h, w


# ---------------------------------------------------------------- export

def export(job: ExportJob) -> None:
    _check_contract(job)
    suffix = job.weights.path.suffix.lower() if job.weights.path is not None else None
    if suffix == ".onnx":
        wrap_onnx(job)
    elif suffix in (None, ".pth", ".pt"):
        _export_torch(job)
    else:
        raise ExportError(f"arcface weights {job.weights.path}: expected an .onnx (w600k_r50.onnx) "
                          "or a .pth state dict")


def _export_torch(job: ExportJob) -> None:
    import torch

    from .graph_ops import ImagePreprocess, l2_normalize

    h, w = _check_contract(job)
    job.progress("building IResNet-50")
    backbone = load_torch_backbone(job.weights)

    class ArcFace(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.pre = ImagePreprocess((MEAN,) * 3, (STD,) * 3)
            self.net = backbone

        def forward(self, faces):
            return l2_normalize(self.net(self.pre(faces)))

    model = ArcFace().eval()
    name_in, name_out = job.contract.inputs[0].name, job.contract.outputs[0].name
    dummy = torch.zeros(2, h, w, 3, dtype=torch.uint8)
    job.progress(f"torch.onnx.export (opset {OPSET})")
    torch_to_onnx(model, (dummy,), job.out_path, [name_in], [name_out])


def wrap_onnx(job: ExportJob) -> None:
    """user ONNX (float NCHW, (x-127.5)/127.5 RGB) -> uint8 NHWC in, L2-normalised out, dynamic batch."""
    import onnx
    from onnx import TensorProto, compose, helper

    h, w = _check_contract(job)
    job.progress(f"wrapping {job.weights.path.name}")
    try:
        user = onnx.load(str(job.weights.path))
    except Exception as exc:  # protobuf DecodeError and friends
        raise ExportError(f"arcface: {job.weights.path} is not a readable ONNX file: {exc}") from exc
    inits = {i.name for i in user.graph.initializer}
    real_inputs = [i for i in user.graph.input if i.name not in inits]
    if len(real_inputs) != 1 or len(user.graph.output) != 1:
        raise ExportError(f"arcface: {job.weights.path.name} must have one image input and one output, "
                          f"has {len(real_inputs)} and {len(user.graph.output)}")
    u_in, u_out = real_inputs[0], user.graph.output[0]
    if len(user.graph.input) > 1:  # old exports list weights as inputs too: not part of the contract
        keep = onnx.ValueInfoProto()
        keep.CopyFrom(u_in)
        del user.graph.input[:]
        user.graph.input.append(keep)
        user.ir_version = max(user.ir_version, 4)
        u_in = user.graph.input[0]
    dims = [d.dim_value if d.HasField("dim_value") else None for d in u_in.type.tensor_type.shape.dim]
    if len(dims) != 4 or dims[1:] != [3, h, w]:
        raise ExportError(f"arcface: {job.weights.path.name} input {u_in.name} has dims {dims}, "
                          f"expected [N,3,{h},{w}] (the contract's face size)")
    # Make the batch axis symbolic on the graph's edges; intermediate shape annotations
    # may carry the old fixed batch, so drop them (ORT re-infers). Proven below.
    for vi in (u_in, u_out):
        vi.type.tensor_type.shape.dim[0].Clear()
        vi.type.tensor_type.shape.dim[0].dim_param = "batch"
    del user.graph.value_info[:]

    user = _to_project_opset(user, job)
    opsets = [o for o in user.opset_import]
    name_in, name_out = job.contract.inputs[0].name, job.contract.outputs[0].name
    f32 = TensorProto.FLOAT

    def model_of(graph):
        return helper.make_model(graph, opset_imports=opsets, ir_version=user.ir_version)

    pre = model_of(helper.make_graph(
        [helper.make_node("Transpose", [name_in], ["vs_pre_nchw"], perm=[0, 3, 1, 2], name="vs_pre_transpose"),
         helper.make_node("Cast", ["vs_pre_nchw"], ["vs_pre_f32"], to=f32, name="vs_pre_cast"),
         helper.make_node("Sub", ["vs_pre_f32", "vs_pre_mean"], ["vs_pre_centred"], name="vs_pre_sub"),
         helper.make_node("Mul", ["vs_pre_centred", "vs_pre_inv_std"], ["vs_pre_out"], name="vs_pre_scale")],
        "vs_preprocess",
        [helper.make_tensor_value_info(name_in, TensorProto.UINT8, ["batch", h, w, 3])],
        [helper.make_tensor_value_info("vs_pre_out", f32, ["batch", 3, h, w])],
        [helper.make_tensor("vs_pre_mean", f32, [], [MEAN]), helper.make_tensor("vs_pre_inv_std", f32, [], [1.0 / STD])]))
    # L2 norm from ops whose signatures are the same in every opset (ReduceSum/ReduceL2
    # moved axes to an input at 13/18; the user's file may be at any opset).
    post = model_of(helper.make_graph(
        [helper.make_node("Mul", ["vs_post_in", "vs_post_in"], ["vs_post_sq"], name="vs_post_sq"),
         helper.make_node("MatMul", ["vs_post_sq", "vs_post_ones"], ["vs_post_sum"], name="vs_post_sum"),
         helper.make_node("Max", ["vs_post_sum", "vs_post_eps"], ["vs_post_clamped"], name="vs_post_clamp"),
         helper.make_node("Sqrt", ["vs_post_clamped"], ["vs_post_norm"], name="vs_post_sqrt"),
         helper.make_node("Div", ["vs_post_in", "vs_post_norm"], [name_out], name="vs_post_div")],
        "vs_l2norm",
        [helper.make_tensor_value_info("vs_post_in", f32, ["batch", EMBEDDING_DIM])],
        [helper.make_tensor_value_info(name_out, f32, ["batch", EMBEDDING_DIM])],
        [helper.make_tensor("vs_post_ones", f32, [EMBEDDING_DIM, 1], [1.0] * EMBEDDING_DIM),
         helper.make_tensor("vs_post_eps", f32, [], [1e-24])]))
    merged = compose.merge_models(pre, user, io_map=[("vs_pre_out", u_in.name)])
    merged = compose.merge_models(merged, post, io_map=[(u_out.name, "vs_post_in")])
    unique = {o.domain: o.version for o in merged.opset_import}   # merge_models repeats them
    del merged.opset_import[:]
    merged.opset_import.extend(helper.make_opsetid(d, v) for d, v in unique.items())
    onnx.save(merged, str(job.out_path))
    _prove_batch_invariance(job.out_path, name_in, (h, w), job.weights.path.name)


def _to_project_opset(user, job: ExportJob):
    """insightface files are opset 11; bring them to export.base.OPSET like every other graph
    (TensorRT and verify expect it). A file the converter cannot handle keeps its own opset."""
    from onnx import version_converter

    current = max((o.version for o in user.opset_import if o.domain in ("", "ai.onnx")), default=OPSET)
    if current == OPSET:
        return user
    try:
        converted = version_converter.convert_version(user, OPSET)
    except Exception as exc:  # the converter raises bare RuntimeErrors for unsupported ops
        job.progress(f"keeping opset {current}: conversion to {OPSET} failed ({str(exc)[:120]})")
        return user
    job.progress(f"converted opset {current} -> {OPSET}")
    return converted


def _prove_batch_invariance(path: Path, name_in: str, hw: tuple[int, int], what: str) -> None:
    """A file whose batch was folded into constants gives wrong rows silently: refuse it."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).integers(0, 256, (3, *hw, 3), dtype=np.uint8)
    try:
        batched = sess.run(None, {name_in: x})[0]
    except Exception as exc:  # ORT raises its own Fail/RuntimeException types
        raise ExportError(f"arcface: {what} does not run at batch 3 after making its batch dynamic "
                          f"(batch folded into the graph?): {exc}") from exc
    single = np.concatenate([sess.run(None, {name_in: x[i:i + 1]})[0] for i in range(3)])
    diff = float(np.abs(batched - single).max())
    if batched.shape != single.shape or diff > 1e-4:
        raise ExportError(f"arcface: {what} at batch 3 differs from 3 batch-1 runs (max diff {diff:.3g}); "
                          "its batch axis cannot be made dynamic safely")


# ---------------------------------------------------------------- independent reference

def reference(job: ExportJob):
    """Per-image reference: the torch IResNet (or the user's original ONNX) plus numpy pre/post.

    ref({"faces": uint8 [B,H,W,3]}) -> {"embeddings": [B,512]}."""
    h, w = _check_contract(job)
    if job.weights.path is not None and job.weights.path.suffix.lower() == ".onnx":
        import onnxruntime as ort

        sess = ort.InferenceSession(str(job.weights.path), providers=["CPUExecutionProvider"])
        user_in = sess.get_inputs()[0].name

        def run_one(x: np.ndarray) -> np.ndarray:
            return sess.run(None, {user_in: x})[0][0]
    else:
        import torch

        net = load_torch_backbone(job.weights)

        def run_one(x: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                return net(torch.from_numpy(x)).numpy()[0]

    in_name, out_name = job.contract.inputs[0].name, job.contract.outputs[0].name

    def ref(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        embs = []
        for img in inputs[in_name]:  # per image on purpose: an independent check of batch handling
            x = ((img.astype(np.float32) - MEAN) / STD).transpose(2, 0, 1)[None]
            e = run_one(np.ascontiguousarray(x)).astype(np.float32)
            embs.append(e / max(float(np.linalg.norm(e)), 1e-12))
        return {out_name: np.stack(embs)}

    return ref
