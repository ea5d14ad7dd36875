"""Real photos as model inputs, for checks that need real detections (verify, engine parity).

Random pixels give a real detector nothing to find, and a comparison of zero-padded rows
proves nothing. These are photos that ship in pip wheels (ultralytics' bus.jpg and
zidane.jpg, skimage's astronaut, cat, cup, rocket), letterboxed like the gateway does
(top-left, zero padding) and varied by crop and brightness, deterministic for a seed.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")
ULTRALYTICS_PHOTOS = ("bus.jpg", "zidane.jpg")


def ultralytics_photo(name: str) -> np.ndarray:
    """An RGB photo from the ultralytics wheel's assets (bus.jpg, zidane.jpg)."""
    import cv2
    from ultralytics.utils import ASSETS

    bgr = cv2.imread(str(Path(ASSETS) / name))
    if bgr is None:
        raise FileNotFoundError(f"the ultralytics wheel has no {name} in {ASSETS}")
    return np.ascontiguousarray(bgr[..., ::-1])


@lru_cache(maxsize=1)
def photos() -> tuple[np.ndarray, ...]:
    """Every photo available here (skimage's always; ultralytics' when it is installed)."""
    from skimage import data

    out = [getattr(data, n)()[..., :3] for n in SKIMAGE_PHOTOS]
    try:
        out += [ultralytics_photo(n) for n in ULTRALYTICS_PHOTOS]
    except ImportError:
        pass
    return tuple(out)


def letterbox(img: np.ndarray, h: int, w: int) -> tuple[np.ndarray, float]:
    """Aspect-kept resize to fit (h, w), placed top-left on zeros (the gateway's geometry).
    Returns the frame and the scale (model pixels = original pixels * scale)."""
    import cv2

    s = min(h / img.shape[0], w / img.shape[1])
    nh, nw = max(1, round(img.shape[0] * s)), max(1, round(img.shape[1] * s))
    frame = np.zeros((h, w, 3), np.uint8)
    frame[:nh, :nw] = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
    return frame, s


def photo_frames(n: int, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """n frames [n,h,w,3]: the photos in turn, each under a random crop (70-100%) and
    brightness (0.8-1.15), letterboxed to (h, w)."""
    pool = photos()
    out = np.empty((n, h, w, 3), np.uint8)
    for i in range(n):   # test data, not a hot path
        img = pool[i % len(pool)]
        zoom = rng.uniform(0.7, 1.0)
        ch, cw = int(img.shape[0] * zoom), int(img.shape[1] * zoom)
        y0, x0 = rng.integers(0, img.shape[0] - ch + 1), rng.integers(0, img.shape[1] - cw + 1)
        frame, _ = letterbox(img[y0:y0 + ch, x0:x0 + cw], h, w)
        out[i] = np.clip(frame * rng.uniform(0.8, 1.15), 0, 255).astype(np.uint8)
    return out


def photo_inputs(contract, batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A feed of real frames (the perf scene, then photos) for a model with one [H,W,3] uint8
    image input: faces, people and objects for the detectors to find."""
    (spec,) = contract.inputs
    return {spec.name: real_frames(batch, spec.dims[0], spec.dims[1], rng)}


def real_frames(n: int, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """Frames for checks: the perf scene first (a face, objects, printed lines), then photos;
    a text-line strip (w > 2h, e.g. the recogniser's 48x320) gets printed words instead."""
    from export import scene

    if w > 2 * h:
        words = ("VISIONSERVE 2026", "Triton Inference", "batch of lines", "Lorem ipsum 123", "text recognition")
        out = np.empty((n, h, w, 3), np.uint8)
        for i in range(n):
            panel, _ = scene.render_lines([words[(i + int(rng.integers(len(words)))) % len(words)]], w,
                                          font_px=max(8, int(h * 0.55)), margin=max(2, h // 8), height=h)
            out[i] = panel
        return out
    frames = photo_frames(n, h, w, rng)
    frames[0] = scene.scene(h, w)
    return frames
