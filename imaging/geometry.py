"""Letterbox placement and its exact inverse.

`plan_letterbox` places the image, resized with its aspect ratio kept, at the TOP-LEFT
of the model frame (padding right/bottom). Top-left placement keeps the inverse mapping
a pure scale: x_orig = x_model / scale_x.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Letterbox:
    """Where an original (oriented) image sits in the model frame."""
    width: int        # original, oriented
    height: int
    new_w: int        # drawn size inside the frame, at the top-left
    new_h: int
    frame_w: int = 0  # the frame (0: not known)
    frame_h: int = 0

    @property
    def scale(self) -> tuple[float, float]:
        """Model pixels per original pixel, per axis (exact ratio of the drawn size)."""
        return self.new_w / self.width, self.new_h / self.height


def plan_letterbox(width: int, height: int, frame_w: int, frame_h: int) -> Letterbox:
    r = min(frame_w / width, frame_h / height)
    new_w = min(frame_w, max(1, round(width * r)))
    new_h = min(frame_h, max(1, round(height * r)))
    return Letterbox(width, height, new_w, new_h, frame_w, frame_h)


def to_original(points: np.ndarray, scale_xy: np.ndarray, size_wh: np.ndarray) -> np.ndarray:
    """Map model-frame x,y pairs back to original pixels, for a whole batch at once.

    points: [B, ..., 2k] with interleaved x,y (boxes x1,y1,x2,y2, landmarks [...,2],
    polygons). scale_xy / size_wh: [B, 2]. Results are clipped to the image.
    """
    b = points.shape[0]
    shape = (b,) + (1,) * (points.ndim - 2) + (-1, 2)
    xy = points.reshape(points.shape[:-1] + (-1, 2))
    out = xy / scale_xy.reshape(shape)
    np.clip(out, 0.0, size_wh.reshape(shape).astype(out.dtype), out=out)
    return out.reshape(points.shape).astype(np.float32, copy=False)
