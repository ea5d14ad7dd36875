"""5-point face alignment to the ArcFace template as a graph: every face slot of every image.

Per face: the least-squares 2-D similarity (Umeyama; no reflection) mapping its 5 landmarks
onto insightface's `arcface_dst` template, solved in closed form and batched (in complex
form w = a*z + b the optimum is a = sum(conj(zc)*wc) / sum(|zc|^2): no SVD), inverted, and
sampled with bilinear GridSample (zeros padding, align_corners=False). This is the math of
insightface's `norm_crop` (skimage SimilarityTransform + cv2.warpAffine), on the device.

All K faces of an image are sampled in ONE GridSample over that image (the per-face grids
stacked along the output height), so the 640x640 frame is never copied K times.
"""
from __future__ import annotations

import numpy as np

from .base import OPSET, ExportError, ExportJob
from .onnx_graph import torch_to_onnx


# insightface/utils/face_align.py: arcface_dst, the 112x112 template (eyes, nose, mouth corners).
ARCFACE_DST_112 = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                            [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float32)
# |a|^2 and the landmark spread below this are degenerate (empty slot: all-zero landmarks).
_EPS = 1e-6


def template(size: int) -> np.ndarray:
    """insightface estimate_norm's template for a square crop of `size` pixels."""
    if size % 112 == 0:
        return ARCFACE_DST_112 * (size / 112.0)
    ratio = size / 128.0
    dst = ARCFACE_DST_112 * ratio
    dst[:, 0] += 8.0 * ratio
    return dst


def geometry(job: ExportJob) -> dict[str, int]:
    """Sizes from the contract: input frame, faces per frame (the variable range's max), crop size."""
    c = job.contract.with_variable_dims("max")
    names = [t.name for t in c.inputs]
    if len(names) != 2:
        raise ExportError(f"face_align: expected 2 inputs (images, landmarks), contract has {names}")
    img, lmk, crops = c.inputs[0], c.inputs[1], c.outputs[0]
    if len(img.dims) != 3 or img.dims[2] != 3:
        raise ExportError(f"face_align: images dims {img.dims}, expected [H,W,3]")
    if len(lmk.dims) != 3 or lmk.dims[1:] != (len(ARCFACE_DST_112), 2):
        raise ExportError(f"face_align: landmarks dims {lmk.dims}, expected [K,5,2]")
    k = lmk.dims[0]
    if len(crops.dims) != 4 or crops.dims[0] != k or crops.dims[3] != 3 or crops.dims[1] != crops.dims[2]:
        raise ExportError(f"face_align: crops dims {crops.dims}, expected [{k},S,S,3]")
    return {"in_h": img.dims[0], "in_w": img.dims[1], "faces": k, "size": crops.dims[1]}


def build_module(in_h: int, in_w: int, size: int):
    import torch
    from torch import nn

    class FaceAlign(nn.Module):
        def __init__(self):
            super().__init__()
            dst = torch.from_numpy(template(size))
            self.register_buffer("dst_mean", dst.mean(0), persistent=False)
            self.register_buffer("dst_c", dst - dst.mean(0), persistent=False)
            v, u = torch.meshgrid(torch.arange(size, dtype=torch.float32),
                                  torch.arange(size, dtype=torch.float32), indexing="ij")
            # crop pixel centres (u, v, 1) in OpenCV's convention (pixel i is at coordinate i)
            self.register_buffer("base", torch.stack([u, v, torch.ones_like(u)], -1).reshape(-1, 3),
                                 persistent=False)
            # a buffer, not a tensor made in forward: no host copy (CUDA graph capture refuses one)
            self.register_buffer("shift", torch.tensor([0.0, 0.0, 1.0]), persistent=False)

        def sampling_grid(self, landmarks):
            """landmarks [B,K,5,2] (image pixels) -> GridSample grid [B, K*S, S, 2]."""
            b, k = landmarks.shape[0], landmarks.shape[1]
            src_mean = landmarks.mean(2)                              # [B,K,2]
            sc = landmarks - src_mean[:, :, None, :]                  # [B,K,5,2]
            sx, sy = sc[..., 0], sc[..., 1]
            dx, dy = self.dst_c[:, 0], self.dst_c[:, 1]
            var = (sx * sx + sy * sy).sum(-1).clamp_min(_EPS)         # [B,K]
            p = (sx * dx + sy * dy).sum(-1) / var                     # a = p + iq: scale * rotation
            q = (sx * dy - sy * dx).sum(-1) / var
            n = (p * p + q * q).clamp_min(_EPS)                       # zero for empty slots: no NaN
            ip, iq = p / n, -q / n                                    # 1/a
            # inverse map, crop (u,v) -> image z = (w - dst_mean)/a + src_mean
            mx, my = self.dst_mean[0], self.dst_mean[1]
            cx = src_mean[..., 0] - ip * mx + iq * my
            cy = src_mean[..., 1] - iq * mx - ip * my
            # pixel -> GridSample's normalised coords (align_corners=False): g = (2z + 1)/W - 1
            row_x = torch.stack([ip, -iq, cx], -1) * (2.0 / in_w)
            row_y = torch.stack([iq, ip, cy], -1) * (2.0 / in_h)
            row_x = row_x + self.shift * (1.0 / in_w - 1.0)
            row_y = row_y + self.shift * (1.0 / in_h - 1.0)
            theta_t = torch.stack([row_x, row_y], -1)                 # [B,K,3,2]: affine_grid's theta^T
            grid = torch.matmul(self.base, theta_t)                   # [B,K,S*S,2]
            return grid.reshape(b, k * size, size, 2)                 # faces stacked along height

        def forward(self, images, landmarks):
            b, k = landmarks.shape[0], landmarks.shape[1]
            grid = self.sampling_grid(landmarks)
            x = images.permute(0, 3, 1, 2).float()   # no normalisation: crops stay uint8 pixels
            out = nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
            out = out.reshape(b, 3, k, size, size).permute(0, 2, 3, 4, 1)
            return out.round().clamp(0, 255).to(torch.uint8)

    return FaceAlign().eval()


def export(job: ExportJob) -> None:
    import torch

    if OPSET < 16:
        raise ExportError(f"face_align needs GridSample (opset >= 16), export.base.OPSET is {OPSET}")
    g = geometry(job)
    module = build_module(g["in_h"], g["in_w"], g["size"])
    (img, lmk), out = job.contract.inputs, job.contract.outputs[0]
    images = torch.zeros(2, g["in_h"], g["in_w"], 3, dtype=torch.uint8)
    landmarks = torch.from_numpy(np.broadcast_to(template(g["size"]), (2, g["faces"], 5, 2)).copy())
    job.progress(f"torch.onnx.export (opset {OPSET}), {g['faces']} faces x {g['size']}px per frame")
    variable = {t.name: {i + 1: f"variable{i + 1}" for i, d in enumerate(t.dims) if d < 0}
                for t in (lmk, out)}
    torch_to_onnx(module, (images, landmarks), job.out_path, [img.name, lmk.name], [out.name], variable)


def similarity_matrix(landmarks: np.ndarray, size: int) -> np.ndarray | None:
    """The 2x3 image->crop matrix insightface uses (skimage's Umeyama), None when degenerate."""
    from skimage.transform import SimilarityTransform

    dst = template(size)
    if hasattr(SimilarityTransform, "from_estimate"):     # skimage >= 0.26
        tform = SimilarityTransform.from_estimate(landmarks, dst)
        ok = bool(tform)
    else:
        tform = SimilarityTransform()
        ok = tform.estimate(landmarks, dst)
    if not ok or not np.all(np.isfinite(tform.params)):
        return None
    return tform.params[:2].astype(np.float64)


def reference(job: ExportJob):
    """Per face, numpy/OpenCV: skimage SimilarityTransform + cv2.warpAffine (insightface norm_crop).

    ref({"images": ..., "landmarks": ...}) -> {"crops": ...}. The warp runs on float pixels and
    rounds once, like the graph (cv2's uint8 path rounds its bilinear weights to 1/32 and adds
    up to ~1 level of error on edges). A degenerate slot (no similarity: all-zero landmarks)
    samples the landmarks' centroid everywhere, the graph's defined don't-care value.
    """
    import cv2

    g = geometry(job)
    (img_name, lmk_name), out_name = (t.name for t in job.contract.inputs), job.contract.outputs[0].name
    size = g["size"]
    warp = dict(dsize=(size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)

    def ref(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        images, landmarks = inputs[img_name], inputs[lmk_name]
        crops = np.zeros((*landmarks.shape[:2], size, size, 3), np.uint8)
        for i, (img, lmks) in enumerate(zip(images, landmarks)):
            pixels = img.astype(np.float32)
            for j, lmk in enumerate(lmks.astype(np.float64)):
                m = similarity_matrix(lmk, size) if np.ptp(lmk, axis=0).max() > 1e-3 else None
                if m is None:
                    centre = np.array([[0.0, 0.0, lmk[:, 0].mean()], [0.0, 0.0, lmk[:, 1].mean()]])
                    out = cv2.warpAffine(pixels, centre, flags=warp["flags"] | cv2.WARP_INVERSE_MAP,
                                         **{k: v for k, v in warp.items() if k != "flags"})
                else:
                    out = cv2.warpAffine(pixels, m, **warp)
                crops[i, j] = np.clip(np.rint(out), 0, 255).astype(np.uint8)
        return {out_name: crops}

    return ref


def random_landmarks(rng: np.random.Generator, n: int, frame: tuple[int, int], size: int,
                     empty: float = 0.25, inside: bool = True) -> np.ndarray:
    """[n,5,2] plausible faces: the template under random similarities (scale 0.5-3, +-30 deg),
    with a share of all-zero (empty) slots. `inside` keeps every crop's footprint inside the
    frame (at the frame edge OpenCV's 1/32-pixel coordinate rounding meets a jump to the zero
    padding and differs by up to ~8 levels; tests check the edge separately)."""
    tmpl = template(size) - size / 2.0
    scale = rng.uniform(0.5, 3.0, n)
    angle = np.deg2rad(rng.uniform(-30, 30, n))
    cos, sin = np.cos(angle) * scale, np.sin(angle) * scale
    rot = np.stack([np.stack([cos, -sin], -1), np.stack([sin, cos], -1)], -2)          # [n,2,2]
    wh = np.array([frame[1], frame[0]], dtype=np.float64)
    margin = (size * 0.75 * scale)[:, None, None] if inside else np.zeros((n, 1, 1))  # > half-diagonal
    centre = margin + rng.uniform(0, 1, (n, 1, 2)) * np.clip(wh - 2 * margin, 0, None)
    pts = np.einsum("nij,pj->npi", rot, tmpl) + centre
    pts[rng.random(n) < empty] = 0.0
    return pts.astype(np.float32)


def smooth_images(rng: np.random.Generator, n: int, h: int, w: int) -> np.ndarray:
    """Photo-like test frames: low-frequency colour noise plus mild grain (uint8)."""
    import cv2

    low = rng.integers(0, 256, (n, 24, 24, 3), dtype=np.uint8)
    frames = np.stack([cv2.resize(x, (w, h), interpolation=cv2.INTER_CUBIC) for x in low]).astype(np.int16)
    frames += rng.integers(-8, 9, frames.shape, dtype=np.int16)
    return np.clip(frames, 0, 255).astype(np.uint8)


def sample_inputs(contract, batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """For verify: photo-like frames and plausible landmarks (uniform noise makes any two
    bilinear samplers disagree by whole levels; random points are not faces)."""
    img, lmk = contract.with_variable_dims("max").inputs
    h, w = img.dims[:2]
    k, size = lmk.dims[0], contract.outputs[0].dims[1]
    landmarks = random_landmarks(rng, batch * k, (h, w), size).reshape(batch, k, 5, 2)
    return {img.name: smooth_images(rng, batch, h, w), lmk.name: landmarks}
