"""Image bytes -> RGB uint8 pixels, letterboxed into a caller's frame.

JPEGs are decoded by libjpeg-turbo (simplejpeg), downscaled in the DCT domain when the
image is at least twice the size it is drawn at, then EXIF-oriented and resized; an
upright JPEG whose scaled size is the drawn size is decoded straight into the frame
rows. PNGs are decoded by OpenCV from their critical chunks only (imaging.png).
Progressive JPEGs with more than MAX_SCANS scans are refused before decoding: every
scan walks the whole coefficient buffer again, and encoders write about 10.
"""
from __future__ import annotations

import cv2
import numpy as np
import simplejpeg

from . import jpeg, png
from .cost import stored_target, writes_in_place
from .errors import CorruptImage, ImageTooComplex
from .geometry import Letterbox, plan_letterbox
from .header import ImageHeader, read_header

MAX_SCANS = 64
cv2.setNumThreads(1)  # decode threads are the parallelism; cv2's own pool would oversubscribe
# a corrupt client image is the client's error (raised as CorruptImage), not a log line
cv2.setLogLevel(2)   # LOG_LEVEL_ERROR


def check_jpeg(data, header: ImageHeader) -> None:
    """Before libjpeg allocates anything: its own reading of the header (up to the first
    scan, which imaging.jpeg found within its bounds) must agree with the one the cost
    was charged from, and a progressive JPEG's scans are counted."""
    try:
        h, w, _, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError as exc:
        raise CorruptImage(f"corrupt JPEG header: {exc}") from exc
    if (w, h) != (header.width, header.height):
        raise CorruptImage(f"corrupt JPEG: its frame headers disagree ({w}x{h} and "
                           f"{header.width}x{header.height})")
    if header.buffered and jpeg.count_scans(data, MAX_SCANS) > MAX_SCANS:
        raise ImageTooComplex(f"progressive JPEG with over {MAX_SCANS} scans; re-encode it "
                              "(baseline, or a standard progressive script)")


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


def _jpeg(data, header: ImageHeader, min_w: int, min_h: int, buffer=None) -> np.ndarray:
    try:
        return simplejpeg.decode_jpeg(data, colorspace="RGB", min_width=min_w,
                                      min_height=min_h, min_factor=2, buffer=buffer)
    except ValueError as exc:
        raise CorruptImage(f"corrupt or truncated JPEG: {exc}") from exc


def _png_bgr(data) -> np.ndarray:
    try:
        img = cv2.imdecode(np.frombuffer(png.critical(data), np.uint8),
                           cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    except cv2.error as exc:
        raise CorruptImage("corrupt or truncated PNG") from exc
    if img is None:
        raise CorruptImage("corrupt or truncated PNG")
    return img


def decode(data, header: ImageHeader, min_w: int = 0, min_h: int = 0) -> np.ndarray:
    """Decode to RGB uint8 HWC, oriented. JPEGs at least 2x larger than (min_w, min_h)
    (displayed size) are downscaled in the DCT domain, never below that size."""
    if header.kind == "jpeg":
        check_jpeg(data, header)
        if header.transposed:
            min_w, min_h = min_h, min_w
        return _orient(_jpeg(data, header, min_w, min_h), header.orientation)
    return cv2.cvtColor(_png_bgr(data), cv2.COLOR_BGR2RGB)


def decode_into(data, header: ImageHeader, box: Letterbox, out: np.ndarray,
                pad_value: int = 0) -> None:
    """Decode and letterbox into `out` ([frame_h, frame_w, 3] uint8, written fully).
    What it holds meanwhile is imaging.decode_cost(header, box)."""
    target = out[:box.new_h, :box.new_w]
    if header.kind == "png":
        # resized (or copied) as BGR, then swapped in the frame: no full-size RGB copy
        _fit(_png_bgr(data), target, box)
        cv2.cvtColor(target, cv2.COLOR_BGR2RGB, dst=target)
    elif writes_in_place(header, box) and out.flags.c_contiguous:
        check_jpeg(data, header)
        _jpeg(data, header, box.new_w, box.new_h, buffer=out[:box.new_h])
    else:
        check_jpeg(data, header)
        img = _orient(_jpeg(data, header, *stored_target(header, box)), header.orientation)
        _fit(img, target, box)
    if box.new_h < out.shape[0]:
        out[box.new_h:] = pad_value
    if box.new_w < out.shape[1]:
        out[:box.new_h, box.new_w:] = pad_value


def _fit(img: np.ndarray, target: np.ndarray, box: Letterbox) -> None:
    if img.shape[:2] == (box.new_h, box.new_w):
        target[...] = img
        return
    # AREA only where the remaining downscale is large (PNGs, JPEGs under 2x do not
    # reach here large); LINEAR is several times cheaper and exact enough below 2x.
    interp = cv2.INTER_AREA if img.shape[1] >= 2 * box.new_w else cv2.INTER_LINEAR
    cv2.resize(img, (box.new_w, box.new_h), dst=target, interpolation=interp)


def letterbox(data, frame_w: int, frame_h: int, *, max_pixels: int, max_side: int,
              pad_value: int = 0, out: np.ndarray | None = None) -> tuple[np.ndarray, Letterbox]:
    """One image, start to end, for a per-item caller (a Triton decode step): header
    and limits, then decoded and letterboxed into `out` (a fresh frame when None).
    Returns the frame and where the image sits in it; raises only ImagingError."""
    header = read_header(data, max_pixels=max_pixels, max_side=max_side)
    box = plan_letterbox(*header.size, frame_w, frame_h)
    if out is None:
        out = np.empty((frame_h, frame_w, 3), np.uint8)
    decode_into(data, header, box, out, pad_value)
    return out, box
