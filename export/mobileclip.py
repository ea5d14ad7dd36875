"""MobileCLIP2-S2 (open_clip) image and text encoders, and the 640->256 resize feeding them.

mobileclip_image  uint8 NHWC RGB 256x256 -> the model's own normalisation (open_clip's
                  preprocess config for MobileCLIP2-S2: mean 0, std 1 on [0,1] pixels)
                  -> FastViT-MCi2 (MobileOne branches re-parameterised, as Apple does for
                  inference and export) -> L2-normalised 512-d embedding.
mobileclip_text   int32 BPE tokens [77] (pipelines/clip_tokenizer.py) -> the text
                  transformer with open_clip's argmax (end-token) pooling -> L2 norm.
                  Also writes the BPE vocabulary into model_repository/clip_tokenizer/1/.
clip_resize       uint8 640x640x3 -> uint8 256x256x3, bilinear (half-pixel centres,
                  no antialias), rounded and clamped: one detector frame feeds both
                  YOLO and MobileCLIP inside the `analyze` ensemble.

Weights: an open_clip checkpoint when given (--weights mobileclip_image=PATH or a weights
dir), else seeded synthetic weights. open_clip's stock random init gives an image
embedding that does not depend on the image (layer scales 1e-5, BatchNorm statistics
0/1), which would make every parity check vacuous, so the synthetic image tower gets
layer scales 0.5 and BatchNorm statistics measured on seeded noise images.
"""
from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import numpy as np

from .base import OPSET, ExportError, ExportJob, WeightsSource

OPEN_CLIP_MODEL = "MobileCLIP2-S2"
VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
_SYNTHETIC_LAYER_SCALE = 0.5
_CALIBRATION_IMAGES = 4


# ---------------------------------------------------------------- weights

def preprocess_config() -> dict:
    """mean/std of the published MobileCLIP2-S2 weights ([0,1] pixel scale), from open_clip."""
    import open_clip

    tags = open_clip.list_pretrained_tags_by_model(OPEN_CLIP_MODEL)
    if not tags:
        raise ExportError(f"open_clip {open_clip.__version__} has no pretrained config for {OPEN_CLIP_MODEL}")
    cfg = open_clip.get_pretrained_cfg(OPEN_CLIP_MODEL, tags[0])
    return {"mean": tuple(float(v) for v in cfg["mean"]), "std": tuple(float(v) for v in cfg["std"]),
            "tag": tags[0]}


def load_model(weights: WeightsSource, tower: str = "both"):
    """The open_clip model in eval mode, as the weights say (tower "image" calibrates synthetic BN)."""
    import open_clip
    import torch

    if weights.synthetic:
        torch.manual_seed(weights.seed)
        model = open_clip.create_model(OPEN_CLIP_MODEL, pretrained=None)
        if tower in ("image", "both"):
            _liven_synthetic_image_tower(model.visual, weights.seed)
    else:
        try:
            model = open_clip.create_model(OPEN_CLIP_MODEL, pretrained=str(weights.path))
        except (RuntimeError, KeyError, ValueError, OSError, EOFError, pickle.UnpicklingError) as exc:
            raise ExportError(f"{weights.path} is not an open_clip {OPEN_CLIP_MODEL} checkpoint: {exc}") from exc
    return model.eval()


def _liven_synthetic_image_tower(visual, seed: int) -> None:
    """Make seeded random weights input-dependent: bigger layer scales, BN stats from noise."""
    import torch
    from torch import nn

    for m in visual.modules():
        gamma = getattr(m, "gamma", None)
        if "LayerScale" in type(m).__name__ and isinstance(gamma, nn.Parameter):
            gamma.data.fill_(_SYNTHETIC_LAYER_SCALE)
    bns = [m for m in visual.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None            # cumulative average over the calibration pass
    g = torch.Generator().manual_seed(seed)
    size = 256
    coarse = torch.rand(_CALIBRATION_IMAGES, 3, 8, 8, generator=g)
    images = nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    images = (images + 0.1 * torch.randn(images.shape, generator=g)).clamp(0, 1)
    visual.train()
    with torch.no_grad():
        visual(images)
    visual.eval()
    for bn in bns:
        bn.momentum = 0.1


# ---------------------------------------------------------------- export

def export(job: ExportJob) -> None:
    {"mobileclip_image": _export_image, "mobileclip_text": _export_text,
     "clip_resize": _export_resize}[job.name](job)


def _io(job: ExportJob):
    if len(job.contract.inputs) != 1 or len(job.contract.outputs) != 1:
        raise ExportError(f"{job.name}: expected one input and one output in {job.contract.path}")
    return job.contract.inputs[0], job.contract.outputs[0]


def _onnx_export(job: ExportJob, module, dummy, no_grad: bool = True) -> None:
    import contextlib
    import time

    import torch

    spec_in, spec_out = _io(job)
    module.eval()  # the legacy exporter restores the mode it found: make sure that is eval
    job.progress(f"torch.onnx.export (opset {OPSET}, dynamic batch)")
    t0 = time.perf_counter()
    with torch.no_grad() if no_grad else contextlib.nullcontext():
        torch.onnx.export(module, (dummy,), str(job.out_path), input_names=[spec_in.name],
                          output_names=[spec_out.name],
                          dynamic_axes={spec_in.name: {0: "batch"}, spec_out.name: {0: "batch"}},
                          opset_version=OPSET, dynamo=False)
    job.progress(f"wrote {job.out_path.stat().st_size / 1e6:.1f} MB in {time.perf_counter() - t0:.1f} s")


def _export_image(job: ExportJob) -> None:
    import torch
    from timm.utils import reparameterize_model
    from torch import nn

    from .graph_ops import ImagePreprocess, l2_normalize

    spec_in, spec_out = _io(job)
    if spec_in.dtype != np.uint8 or len(spec_in.dims) != 3 or spec_in.dims[2] != 3:
        raise ExportError(f"{job.name}: expected uint8 [H,W,3] input, config has {spec_in.dims}")
    pre = preprocess_config()
    job.progress(f"building open_clip {OPEN_CLIP_MODEL} image tower (mean {pre['mean']}, std {pre['std']})")
    model = load_model(job.weights, tower="image")
    size = tuple(model.visual.preprocess_cfg.get("size", (256, 256))) if hasattr(model.visual, "preprocess_cfg") else None
    if size is not None and tuple(spec_in.dims[:2]) != tuple(size):
        raise ExportError(f"{job.name}: config input {spec_in.dims[:2]} but {OPEN_CLIP_MODEL} takes {size}")
    job.progress("re-parameterising MobileOne/RepMixer branches for inference")
    visual = reparameterize_model(model.visual, inplace=True)
    if model.text is not None:
        del model.text              # free ~250 MB before tracing

    class ImageEncoder(nn.Module):
        def __init__(self):
            super().__init__()
            # open_clip's transform is ToTensor (x/255) then Normalize(mean, std): in 0..255 units
            self.pre = ImagePreprocess([255.0 * m for m in pre["mean"]], [255.0 * s for s in pre["std"]])
            self.visual = visual

        def forward(self, images):
            return l2_normalize(self.visual(self.pre(images)))

    h, w, _ = spec_in.dims
    _onnx_export(job, ImageEncoder(), torch.zeros(2, h, w, 3, dtype=torch.uint8))


def _check_tokenizer(context: int) -> Path:
    """open_clip's tokenizer for the model must be the plain CLIP BPE our serving side implements."""
    import open_clip
    from open_clip.tokenizer import SimpleTokenizer, default_bpe

    tok = open_clip.get_tokenizer(OPEN_CLIP_MODEL)
    if not isinstance(tok, SimpleTokenizer) or tok.reduction_fn is not None \
            or getattr(tok.clean_fn, "__name__", "") != "_clean_lower" or tok.context_length != context:
        raise ExportError(f"open_clip {open_clip.__version__} tokenises {OPEN_CLIP_MODEL} with {tok!r} "
                          f"(context {getattr(tok, 'context_length', '?')}); pipelines/clip_tokenizer.py "
                          f"implements CLIP SimpleTokenizer(clean='lower', context {context}) only")
    return Path(default_bpe())


def write_vocabulary(job: ExportJob) -> Path:
    """Copy the BPE vocabulary next to the Triton tokenizer model (the runner places only model.onnx)."""
    spec_in, _ = _io(job)
    src = _check_tokenizer(spec_in.dims[0])
    dest_dir = job.contract.path.parent.parent / "clip_tokenizer" / "1"
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / VOCAB_FILE
    tmp = dest.with_suffix(".tmp")
    shutil.copyfile(src, tmp)
    tmp.replace(dest)
    job.progress(f"tokenizer vocabulary -> {dest}")
    return dest


def _export_text(job: ExportJob) -> None:
    import torch
    from torch import nn

    from .graph_ops import l2_normalize

    spec_in, spec_out = _io(job)
    if spec_in.dtype != np.int32 or len(spec_in.dims) != 1:
        raise ExportError(f"{job.name}: expected int32 [context] tokens, config has {spec_in.dtype}{spec_in.dims}")
    write_vocabulary(job)
    job.progress(f"building open_clip {OPEN_CLIP_MODEL} text tower")
    model = load_model(job.weights, tower="text")
    text = model.text
    if text.pool_type != "argmax" or text.positional_embedding.shape[0] != spec_in.dims[0]:
        raise ExportError(f"{job.name}: {OPEN_CLIP_MODEL} text tower has pool {text.pool_type}, context "
                          f"{text.positional_embedding.shape[0]}; config expects argmax pooling over {spec_in.dims[0]}")
    del model.visual

    class TextEncoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.text = text

        def forward(self, tokens):
            # int32 ids go straight in: Gather takes int32 indices and ArgMax (the end-token
            # pooling) then runs on int32, which ONNX Runtime and TensorRT both support.
            # Never pool on a float copy: in FP16 ids 49406 (start) and 49407 (end) collide.
            return l2_normalize(self.text(tokens))

    sample = np.zeros((2, spec_in.dims[0]), np.int32)
    sample[:, :3] = [[49406, 320, 49407], [49406, 1125, 49407]]
    # Traced with autograd on: under no_grad nn.MultiheadAttention takes its fused fast
    # path (aten::_native_multi_head_attention), which has no ONNX symbolic.
    _onnx_export(job, TextEncoder(), torch.from_numpy(sample), no_grad=False)


def resize_module(out_hw: tuple[int, int]):
    """uint8 NHWC -> uint8 NHWC at out_hw: bilinear, half-pixel centres, rounded, clamped."""
    import torch
    from torch import nn

    class Resize(nn.Module):
        def forward(self, images):
            x = images.permute(0, 3, 1, 2).float()
            y = nn.functional.interpolate(x, size=out_hw, mode="bilinear", align_corners=False)
            return y.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)

    return Resize()


def _export_resize(job: ExportJob) -> None:
    import torch

    spec_in, spec_out = _io(job)
    if spec_in.dtype != np.uint8 or spec_out.dtype != np.uint8 or spec_in.dims[2:] != (3,) or spec_out.dims[2:] != (3,):
        raise ExportError(f"{job.name}: expected uint8 [H,W,3] -> uint8 [h,w,3], config has "
                          f"{spec_in.dims} -> {spec_out.dims}")
    h, w, _ = spec_in.dims
    _onnx_export(job, resize_module(tuple(spec_out.dims[:2])), torch.zeros(2, h, w, 3, dtype=torch.uint8))


# ---------------------------------------------------------------- verification hooks

def sample_inputs(contract, batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Plausible inputs: smooth images with texture, real tokenised captions of varied length."""
    spec = contract.inputs[0]
    if spec.dtype == np.uint8:
        return {spec.name: sample_images(rng, batch, *spec.dims[:2])}
    return {spec.name: sample_tokens(batch, spec.dims[0])}


def sample_images(rng: np.random.Generator, n: int, h: int, w: int) -> np.ndarray:
    import cv2

    out = np.empty((n, h, w, 3), np.uint8)
    for i in range(n):  # test data only, not a hot path
        coarse = rng.random((6, 6, 3), dtype=np.float32) * 255
        img = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC) + rng.normal(0, 12, (h, w, 3))
        out[i] = np.clip(img, 0, 255).astype(np.uint8)
    return out


CAPTIONS = ("a photo of a cat", "a diagram", "two dogs playing in the snow at night",
            "A red car parked next to a fire hydrant on a busy street, photographed from above.",
            "日本の寺", "emoji 🐱 party 🎉", "x", " ".join(["very long caption"] * 40))


def sample_tokens(n: int, context: int) -> np.ndarray:
    from open_clip.tokenizer import default_bpe

    from pipelines.clip_tokenizer import ClipTokenizer

    tok = ClipTokenizer(default_bpe(), context_length=context)
    return tok([CAPTIONS[i % len(CAPTIONS)] for i in range(n)])


def reference(job: ExportJob):
    """open_clip itself (encode_image / encode_text with normalize=True), or cv2 for the resize."""
    spec_in, spec_out = _io(job)
    if job.name == "clip_resize":
        import cv2

        oh, ow = spec_out.dims[:2]

        def resize_ref(inputs) -> dict[str, np.ndarray]:
            images = _single(inputs, spec_in.name)
            # cv2 INTER_LINEAR on float32 = bilinear with half-pixel centres (no fixed point)
            out = np.stack([cv2.resize(im.astype(np.float32), (ow, oh), interpolation=cv2.INTER_LINEAR)
                            for im in images])
            return {spec_out.name: np.clip(np.rint(out), 0, 255).astype(np.uint8)}

        return resize_ref

    import torch

    model = load_model(job.weights, tower="image" if job.name == "mobileclip_image" else "text")
    if job.name == "mobileclip_image":
        pre = preprocess_config()
        mean = torch.tensor(pre["mean"]).view(1, 3, 1, 1)
        std = torch.tensor(pre["std"]).view(1, 3, 1, 1)

        def image_ref(inputs) -> dict[str, np.ndarray]:
            x = torch.from_numpy(_single(inputs, spec_in.name)).permute(0, 3, 1, 2).float() / 255.0
            with torch.no_grad():
                return {spec_out.name: model.encode_image((x - mean) / std, normalize=True).numpy()}

        return image_ref

    def text_ref(inputs) -> dict[str, np.ndarray]:
        tokens = torch.from_numpy(_single(inputs, spec_in.name).astype(np.int64))
        with torch.no_grad():
            return {spec_out.name: model.encode_text(tokens, normalize=True).numpy()}

    return text_ref


def _single(inputs, name: str) -> np.ndarray:
    return np.asarray(inputs[name] if isinstance(inputs, dict) else inputs)


def side_artifacts(contract) -> list[Path]:
    """The text encoder's export also writes the tokenizer vocabulary for clip_tokenizer."""
    if contract.name != "mobileclip_text":
        return []
    return [contract.path.parent.parent / "clip_tokenizer" / "1" / VOCAB_FILE]
