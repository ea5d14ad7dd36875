"""Image bytes -> letterboxed uint8 HWC pixels, and model pixels -> original pixels.

Pure functions (no FastAPI, no Triton). The geometry contract:

* `read_header` looks only at the header: format, stored size, EXIF orientation. Pixel
  limits are judged from it before any decoding (decompression bombs).
* `plan_letterbox` places the image, resized with its aspect ratio kept, at the
  TOP-LEFT of the model frame (padding right/bottom). Top-left placement keeps the
  inverse mapping a pure scale: x_orig = x_model / scale_x.
* `decode_into` decodes straight into a slot of the caller's batch buffer. JPEGs are
  decoded with libjpeg-turbo (simplejpeg), downscaled in the DCT domain when the image
  is at least twice the size it will be drawn at, then EXIF-oriented and resized.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

import cv2
import numpy as np
import simplejpeg

from .errors import ImageTooLarge, InvalidImage, UnsupportedMediaType

JPEG_MAGIC = b"\xff\xd8\xff"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
cv2.setNumThreads(1)  # decode threads are the parallelism; cv2's own pool would oversubscribe


def sniff(data: bytes) -> str | None:
    """'jpeg', 'png' or None, from the magic bytes (the declared type is not trusted)."""
    if data.startswith(JPEG_MAGIC):
        return "jpeg"
    if data.startswith(PNG_MAGIC):
        return "png"
    return None


@dataclass(frozen=True)
class ImageHeader:
    kind: str          # "jpeg" | "png"
    width: int         # stored (pre-orientation) size
    height: int
    orientation: int   # EXIF orientation 1..8 (1 = as stored)

    @property
    def transposed(self) -> bool:
        """Orientations 5-8 swap width and height."""
        return self.orientation >= 5

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) as displayed, i.e. after orientation."""
        return (self.height, self.width) if self.transposed else (self.width, self.height)


def read_header(data, *, max_pixels: int, max_side: int) -> ImageHeader:
    """`data`: bytes or any buffer (a memoryview slice of a multipart body)."""
    kind = sniff(bytes(data[:8]))
    if kind is None:
        raise UnsupportedMediaType("not a JPEG or PNG image (unrecognised magic bytes)")
    if kind == "jpeg":
        try:
            h, w, _, _ = simplejpeg.decode_jpeg_header(data)
        except ValueError as exc:
            raise InvalidImage(f"corrupt JPEG header: {exc}") from exc
        orientation = jpeg_orientation(data)
    else:
        if len(data) < 24 or data[12:16] != b"IHDR":
            raise InvalidImage("corrupt PNG: no IHDR chunk")
        w, h = struct.unpack(">II", data[16:24])
        orientation = 1
    if w <= 0 or h <= 0:
        raise InvalidImage(f"image has an empty size {w}x{h}")
    if w * h > max_pixels or max(w, h) > max_side:
        raise ImageTooLarge(
            f"image is {w}x{h} = {w * h} pixels; limits are {max_pixels} pixels "
            f"and {max_side} per side")
    return ImageHeader(kind, int(w), int(h), orientation)


def jpeg_orientation(data: bytes) -> int:
    """EXIF orientation from the APP1 segment, walking markers only (no decode).

    Malformed EXIF is treated as orientation 1: it is metadata, not pixels.
    """
    try:
        pos, n = 2, len(data)
        while pos + 4 <= n:
            if data[pos] != 0xFF:
                return 1
            marker = data[pos + 1]
            if marker == 0xFF:           # fill byte
                pos += 1
                continue
            if marker in (0xDA, 0xD9):    # start of scan / end of image: no more headers
                return 1
            length = struct.unpack(">H", data[pos + 2:pos + 4])[0]
            if marker == 0xE1 and data[pos + 4:pos + 10] == b"Exif\x00\x00":
                return _tiff_orientation(bytes(data[pos + 10:pos + 2 + length]))
            pos += 2 + length
    except (struct.error, IndexError):
        pass
    return 1


def _tiff_orientation(tiff: bytes) -> int:
    order = {b"II": "<", b"MM": ">"}.get(tiff[:2])
    if order is None:
        return 1
    ifd = struct.unpack(order + "I", tiff[4:8])[0]
    count = struct.unpack(order + "H", tiff[ifd:ifd + 2])[0]
    for i in range(count):
        entry = ifd + 2 + 12 * i
        tag, typ = struct.unpack(order + "HH", tiff[entry:entry + 4])
        if tag == 0x0112 and typ == 3:   # SHORT
            value = struct.unpack(order + "H", tiff[entry + 8:entry + 10])[0]
            return value if 1 <= value <= 8 else 1
    return 1


@dataclass(frozen=True)
class Letterbox:
    """Where an original (oriented) image sits in the model frame."""
    width: int        # original, oriented
    height: int
    new_w: int        # drawn size inside the frame, at the top-left
    new_h: int

    @property
    def scale(self) -> tuple[float, float]:
        """Model pixels per original pixel, per axis (exact ratio of the drawn size)."""
        return self.new_w / self.width, self.new_h / self.height


def plan_letterbox(width: int, height: int, frame_w: int, frame_h: int) -> Letterbox:
    r = min(frame_w / width, frame_h / height)
    new_w = min(frame_w, max(1, round(width * r)))
    new_h = min(frame_h, max(1, round(height * r)))
    return Letterbox(width, height, new_w, new_h)


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


def _orient(img: np.ndarray, orientation: int) -> np.ndarray:
    """Apply EXIF orientation to stored pixels (matches PIL.ImageOps.exif_transpose)."""
    if orientation == 1:
        return img
    t = img.transpose(1, 0, 2)
    view = {
        2: img[:, ::-1], 3: img[::-1, ::-1], 4: img[::-1],
        5: t, 6: t[:, ::-1], 7: t[::-1, ::-1], 8: t[::-1],
    }[orientation]
    return np.ascontiguousarray(view)


def decode(data: bytes, header: ImageHeader, min_w: int = 0, min_h: int = 0) -> np.ndarray:
    """Decode to RGB uint8 HWC, oriented. JPEGs at least 2x larger than (min_w, min_h)
    (displayed size) are downscaled in the DCT domain, never below that size."""
    if header.kind == "jpeg":
        if header.transposed:
            min_w, min_h = min_h, min_w
        try:
            img = simplejpeg.decode_jpeg(data, colorspace="RGB", min_width=min_w,
                                         min_height=min_h, min_factor=2)
        except ValueError as exc:
            raise InvalidImage(f"corrupt or truncated JPEG: {exc}") from exc
    else:
        img = cv2.imdecode(np.frombuffer(data, np.uint8),
                           cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
        if img is None:
            raise InvalidImage("corrupt or truncated PNG")
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    return _orient(img, header.orientation)


def decode_into(data: bytes, header: ImageHeader, box: Letterbox, out: np.ndarray,
                pad_value: int = 0) -> None:
    """Decode and letterbox into `out` ([frame_h, frame_w, 3] uint8, written fully)."""
    if not _decode_in_place(data, header, box, out):
        img = decode(data, header, box.new_w, box.new_h)
        target = out[:box.new_h, :box.new_w]
        if img.shape[:2] == (box.new_h, box.new_w):
            target[...] = img
        else:
            # AREA only where the remaining downscale is large (PNGs, JPEGs under 2x do
            # not reach here large); LINEAR is several times cheaper and exact enough
            # below 2x.
            interp = cv2.INTER_AREA if img.shape[1] >= 2 * box.new_w else cv2.INTER_LINEAR
            cv2.resize(img, (box.new_w, box.new_h), dst=target, interpolation=interp)
    if box.new_h < out.shape[0]:
        out[box.new_h:] = pad_value
    if box.new_w < out.shape[1]:
        out[:box.new_h, box.new_w:] = pad_value


def _decode_in_place(data: bytes, header: ImageHeader, box: Letterbox, out: np.ndarray) -> bool:
    """The common case without an intermediate image: an upright JPEG whose (DCT-scaled)
    decoded size is exactly the drawn size and fills whole rows of `out` (so the target
    rows are one contiguous block) is decoded by libjpeg-turbo straight into them.
    False when the general path is needed (same pixels either way)."""
    if header.kind != "jpeg" or header.orientation != 1 or box.new_w != out.shape[1] \
            or not out.flags.c_contiguous:
        return False
    try:
        h, w, _, _ = simplejpeg.decode_jpeg_header(data, min_height=box.new_h,
                                                   min_width=box.new_w, min_factor=2)
        if (h, w) != (box.new_h, box.new_w):
            return False
        simplejpeg.decode_jpeg(data, colorspace="RGB", min_width=box.new_w,
                               min_height=box.new_h, min_factor=2, buffer=out[:h])
    except ValueError as exc:
        raise InvalidImage(f"corrupt or truncated JPEG: {exc}") from exc
    return True
