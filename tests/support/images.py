"""Test images: encoders (one JPEG, one PNG), synthetic frames and rendered text."""
from __future__ import annotations

import io

import numpy as np


def jpeg(img: np.ndarray, quality: int = 92, **pil_kw) -> bytes:
    """uint8 RGB (or L) array -> JPEG bytes (Pillow; `pil_kw`: subsampling, exif, ...)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=quality, **pil_kw)
    return buf.getvalue()


def png(img: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "PNG")
    return buf.getvalue()


def noise(w: int, h: int, seed: int = 0, block: int = 1) -> np.ndarray:
    """Random RGB pixels; `block` > 1 makes flat squares (compresses like a photo)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (-(-h // block), -(-w // block), 3), np.uint8)
    return small.repeat(block, 0).repeat(block, 1)[:h, :w]


def flat(w: int, h: int, value: int = 100) -> np.ndarray:
    return np.full((h, w, 3), value, np.uint8)


def noise_jpeg(w: int = 320, h: int = 240, seed: int = 0, quality: int = 85, block: int = 8) -> bytes:
    return jpeg(noise(w, h, seed, block), quality)


def flat_jpeg(w: int = 320, h: int = 240, value: int = 100, quality: int = 80) -> bytes:
    return jpeg(flat(w, h, value), quality)


def text_page(lines, width: int = 640, height: int = 640, font_px: int = 40,
              line_gap: float = 2.0, margin: int = 40) -> np.ndarray:
    """Black text on white, uint8 RGB [height, width, 3]. `lines`: strings (stacked from the
    top-left margin, `line_gap` x font size apart) or ((x, y), text) pairs placed exactly.
    One font for every test (Pillow's bundled one at `font_px`)."""
    from PIL import Image, ImageDraw, ImageFont

    im = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(im)
    font = ImageFont.load_default(size=font_px)
    for i, line in enumerate(lines):
        xy, text = line if isinstance(line, tuple) else ((margin, margin + round(i * font_px * line_gap)), line)
        draw.text(xy, text, fill="black", font=font)
    return np.asarray(im)
